"""Thin wrappers over JAX's autodiff, the first oracle.

Each takes the *forward* code (written once, in ``manual`` or in the case) and lets JAX
derive what the hand derivation claims: a vector-Jacobian product, a gradient, a Hessian
over a flattened parameter pytree, a Hessian-vector product.
"""

import jax
from jax.flatten_util import ravel_pytree


def vjp(f, primals, cotangent):
    """Cotangents of ``primals`` for ``f(*primals)`` pulled back from ``cotangent``.

    Example::

        >>> import jax.numpy as jnp
        >>> vjp(lambda x: 3.0 * x, (jnp.ones(2),), jnp.ones(2))[0].tolist()
        [3.0, 3.0]
    """
    _, pullback = jax.vjp(f, *primals)
    return pullback(cotangent)


def grad(f, argnums=0):
    """``jax.grad`` of a scalar-valued ``f``."""
    return jax.grad(f, argnums=argnums)


def hessian(f, params, *args, **kwargs):
    """Dense (P, P) Hessian of scalar ``f(params, *args)`` in ``ravel_pytree`` order."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda p: f(unravel(p), *args, **kwargs))(flat)


def hvp(f, params, v, *args, **kwargs):
    """Hessian-vector product H v as the forward derivative of the gradient."""
    g = jax.grad(lambda p: f(p, *args, **kwargs))
    return jax.jvp(g, (params,), (v,))[1]


def jacobian(f, params, *args, **kwargs):
    """Dense Jacobian of ``f(params, *args)`` (any output shape) over flattened params."""
    flat, unravel = ravel_pytree(params)
    return jax.jacrev(lambda p: f(unravel(p), *args, **kwargs))(flat)
