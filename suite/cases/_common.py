"""Building blocks for family modules: input generators and the vjp-shaped case.

Every family builds its inputs with these generators so that "random input" means one
thing across the suite: standard normal in the requested dtype, from one key.
"""

import collections

import jax
import jax.numpy as jnp

from reference import autodiff
from suite.cases import Case


def normal(key, shape, dtype, scale=1.0):
    """Standard normal samples times ``scale``, in ``dtype``."""
    return scale * jax.random.normal(key, shape, dtype)


def away_from_zero(key, shape, dtype, margin=0.1):
    """Normal samples with |z| >= margin: inputs for functions with a kink at 0."""
    z = jax.random.normal(key, shape, dtype)
    return jnp.where(z >= 0, z + margin, z - margin).astype(dtype)


def split(key, names):
    """A dict of independent subkeys, one per name."""
    return dict(zip(names, jax.random.split(key, len(names))))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def vjp_case(*, name, family, build, forward, backward, primals, cotangent="dy", **kwargs):
    """A Case for a layer with a hand-derived backward pass.

    ``backward(*primals, dy)`` must return the cotangents of ``primals`` (a tuple, or a
    single array when there is one primal); the oracle is ``jax.vjp`` of ``forward``
    and the finite-difference witness differentiates the scalar <dy, forward(*primals)>,
    whose gradient is exactly that vector-Jacobian product.
    """
    # Both sides return the same named tuple, so reports name the leaves dx, dw, db...
    grads = collections.namedtuple("Cotangents", [f"d{k}" for k in primals])

    def args(inputs):
        return tuple(inputs[k] for k in primals)

    return Case(
        name=name, family=family, build=build,
        manual=lambda inputs: grads(*_as_tuple(backward(*args(inputs), inputs[cotangent]))),
        reference=lambda inputs: grads(*autodiff.vjp(forward, args(inputs), inputs[cotangent])),
        objective=lambda inputs: jnp.vdot(inputs[cotangent], forward(*args(inputs))),
        wrt=tuple(primals), **kwargs)
