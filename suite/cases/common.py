"""Building blocks for family modules: input generators and the vjp-shaped case.

Every family builds its inputs with these generators so that "random input" means one
thing across the suite: standard normal in the requested dtype, from one key.

The draws are made by numpy on the host, seeded with the key's bits. ``jax.random``
would compile a sampler for every new shape (about half a CPU-second each on this CPU,
more than most cases under test); the distribution and the one-key reproducibility are
the same. A float32 input is the float64 draw rounded, so both dtypes of a case solve
the same problem.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np

from reference import autodiff
from suite.cases import Case

__all__ = ["numpy_rng", "normal", "away_from_zero", "split", "vjp_case", "KINKED", "mlp_params",
           "mlp_targets", "kink_margin", "mlp_inputs"]


def numpy_rng(key):
    """A numpy Generator seeded from a JAX key (raw uint32 or typed)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).astype(np.uint64).ravel().tolist())


def normal(key, shape, dtype, scale=1.0):
    """Standard normal samples times ``scale``, in ``dtype`` (drawn on the host)."""
    return jnp.asarray((scale * numpy_rng(key).standard_normal(shape)).astype(dtype))


def away_from_zero(key, shape, dtype, margin=0.1):
    """Normal samples with |z| >= margin: inputs for functions with a kink at 0."""
    z = numpy_rng(key).standard_normal(shape)
    return jnp.asarray(np.where(z >= 0, z + margin, z - margin).astype(dtype))


def split(key, names):
    """A dict of independent subkeys, one per name."""
    return dict(zip(names, jax.random.split(key, len(names)), strict=True))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def vjp_case(*, name, family, build, forward, backward, primals, cotangent="dy",
             arguments=None, **kwargs):
    """A Case for a layer with a hand-derived backward pass.

    ``forward(*arguments)`` is the layer; ``arguments`` names its inputs in call order
    and defaults to ``primals``. ``primals`` are the inputs differentiated; any other
    argument (integer ids, say) is held constant. ``backward(*arguments, dy)`` must
    return the cotangents of ``primals`` only (a tuple, or a single array when there is
    one primal); the oracle is ``jax.vjp`` of ``forward`` in the primals alone, and the
    finite-difference witness differentiates the scalar <dy, forward(*arguments)> along
    a direction in the primals only, its gradient being exactly that vector-Jacobian
    product.
    """
    primals = tuple(primals)
    arguments = primals if arguments is None else tuple(arguments)
    if not primals or set(primals) - set(arguments) or len(set(arguments)) != len(arguments):
        raise ValueError(f"case {name}: primals {primals} must be distinct names among the "
                         f"arguments {arguments}")
    # Both sides return the same named tuple, so reports name the leaves dx, dw, db...
    grads = collections.namedtuple("Cotangents", [f"d{k}" for k in primals])

    def args(inputs):
        return tuple(inputs[k] for k in arguments)

    def reference(inputs):
        def in_primals(*values):  # forward as a function of the primals alone
            merged = {**inputs, **dict(zip(primals, values, strict=True))}
            return forward(*(merged[k] for k in arguments))
        return grads(*autodiff.vjp(in_primals, tuple(inputs[k] for k in primals),
                                   inputs[cotangent]))

    return Case(
        name=name, family=family, build=build,
        manual=lambda inputs: grads(*_as_tuple(backward(*args(inputs), inputs[cotangent]))),
        reference=reference,
        objective=lambda inputs: jnp.vdot(inputs[cotangent], forward(*args(inputs))),
        wrt=primals, **kwargs)


# --- multilayer perceptrons (mlp and stagewise families) -------------------------------

KINKED = ("relu", "leaky_relu")


def mlp_params(key, widths, dtype):
    """(w, b) pairs for layer widths [n_0, ..., n_L]: w ~ N(0, 1/n_{l-1}), b ~ N(0, 0.1²).

    The 1/fan-in variance keeps pre-activations O(1) at every depth, away from the
    saturated tails of sigmoid and tanh where gradients vanish into rounding.
    """
    return _mlp_params_np(numpy_rng(key), widths, dtype)


def _mlp_params_np(rng, widths, dtype):
    return tuple((jnp.asarray(rng.normal(0.0, n_in ** -0.5, (n_in, n_out)), dtype),
                  jnp.asarray(rng.normal(0.0, 0.1, (n_out,)), dtype))
                 for n_in, n_out in zip(widths[:-1], widths[1:], strict=True))


def mlp_targets(key, n, m, loss, dtype):
    """Float targets (N, M) for mse; integer labels (N,) in [0, M) for cross-entropy."""
    return _mlp_targets_np(numpy_rng(key), n, m, loss, dtype)


def _mlp_targets_np(rng, n, m, loss, dtype):
    if loss == "mse":
        return jnp.asarray(rng.normal(size=(n, m)), dtype)
    return jnp.asarray(rng.integers(0, m, size=(n,)), jnp.int32)


def kink_margin(params, x):
    """min |z_l| over every hidden pre-activation: the distance from a ReLU kink."""
    a, margin = np.asarray(x, np.float64), np.inf
    for w, b in params[:-1]:
        z = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        margin = min(margin, float(np.min(np.abs(z))))
        a = np.maximum(z, 0.0)  # which side of the kink is all the margin needs
    return margin


def mlp_inputs(key, widths, n, dtype, *, loss, activation, margin=2e-3, tries=1000):
    """dict(params, x, y) for an MLP case; kinked activations are kept off their kink.

    For relu and leaky_relu the draw is repeated (deterministically) until every hidden
    pre-activation has |z| >= ``margin``. A finite-difference step moves a
    pre-activation by about h·n_in/sqrt(P) <= 1e-3 (h ≈ 7e-4), so with 2e-3 neither
    the oracle nor the witness straddles a kink. Raises ValueError if ``tries`` draws
    fail: the network is then too large for a kink-free draw (use smaller N or widths).
    """
    rng = numpy_rng(key)
    for _ in range(tries if activation in KINKED else 1):
        params = _mlp_params_np(rng, widths, dtype)
        x = jnp.asarray(rng.normal(size=(n, widths[0])), dtype)
        y = _mlp_targets_np(rng, n, widths[-1], loss, dtype)
        if activation not in KINKED or kink_margin(params, x) >= margin:
            return dict(params=params, x=x, y=y)
    raise ValueError(f"no kink-free draw in {tries} tries for widths {widths}, N={n}")
