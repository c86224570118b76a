"""Thin wrappers over JAX's autodiff, the first oracle.

Each takes the *forward* code (written once, in ``manual`` or in the case) and lets JAX
derive what the hand derivation claims: a vector-Jacobian product, a gradient, a Hessian
over a flattened parameter pytree, a Hessian-vector product.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.flatten_util import ravel_pytree

__all__ = ["vjp", "grad", "hessian", "hvp", "jacobian"]


def vjp(f: Callable, primals: Sequence[Any], cotangent: Any) -> tuple:
    """Cotangents of ``primals`` for ``f(*primals)`` pulled back from ``cotangent``.

    Example::

        >>> import jax.numpy as jnp
        >>> vjp(lambda x: 3.0 * x, (jnp.ones(2),), jnp.ones(2))[0].tolist()
        [3.0, 3.0]
    """
    _, pullback = jax.vjp(f, *primals)
    return pullback(cotangent)


def grad(f: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """``jax.grad`` of a scalar-valued ``f``.

    Example::

        >>> import jax.numpy as jnp
        >>> float(grad(lambda x: jnp.sum(x ** 2))(jnp.array([1.0, 2.0]))[1])
        4.0
    """
    return jax.grad(f, argnums=argnums)


def hessian(f: Callable, params: Any, *args: Any, **kwargs: Any) -> jax.Array:
    """Dense (P, P) Hessian of scalar ``f(params, *args)`` in ``ravel_pytree`` order.

    Example::

        >>> import jax.numpy as jnp
        >>> hessian(lambda p: p["a"] ** 2 * p["b"], {"a": 1.0, "b": 3.0}).tolist()
        [[6.0, 2.0], [2.0, 0.0]]
    """
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda p: f(unravel(p), *args, **kwargs))(flat)


def hvp(f: Callable, params: Any, v: Any, *args: Any, **kwargs: Any) -> Any:
    """Hessian-vector product H v as the forward derivative of the gradient.

    Example::

        >>> import jax.numpy as jnp
        >>> hvp(lambda x: jnp.sum(x ** 3), jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0])).tolist()
        [6.0, 0.0]
    """
    g = jax.grad(lambda p: f(p, *args, **kwargs))
    return jax.jvp(g, (params,), (v,))[1]


def jacobian(f: Callable, params: Any, *args: Any, **kwargs: Any) -> jax.Array:
    """Dense Jacobian of ``f(params, *args)`` (any output shape) over flattened params.

    Example::

        >>> import jax.numpy as jnp
        >>> jacobian(lambda p: p["w"] * 2.0, {"w": jnp.ones(2)}).tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    flat, unravel = ravel_pytree(params)
    return jax.jacrev(lambda p: f(unravel(p), *args, **kwargs))(flat)
