"""Central finite differences along a direction — the third witness.

Autodiff and the hand derivation could share a misconception; a finite difference
shares nothing with either. It is computed in float64 and along one random direction
``v`` (as ``jax.test_util.check_grads`` does), so its cost is a handful of forward
evaluations whatever the number of parameters.

First order, Richardson-extrapolated central difference::

    D(h)  = (f(x + h v) - f(x - h v)) / 2h          = f'[v] + O(h²)
    R1    = (4 D(h/2) - D(h)) / 3                   = f'[v] + O(h⁴)

Second order (the curvature along v, vᵀ H v)::

    S(h)  = (f(x + h v) - 2 f(x) + f(x - h v)) / h² = f''[v, v] + O(h²)
    R2    = (4 S(h/2) - S(h)) / 3                   = f''[v, v] + O(h⁴)

The step balances truncation O(h⁴) against rounding O(eps/h) (first order) or
O(eps/h²) (second order): h = eps^(1/5) and eps^(1/6), about 7e-4 and 2e-3 in
float64, for which the witness is good to about eps^(4/5) ≈ 3e-13 and
eps^(2/3) ≈ 4e-11 relative to the scale of the derivative.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["step", "directional_derivative", "random_direction"]

_ORDERS = (1, 2)


def step(dtype: Any, order: int) -> float:
    """The finite-difference step for ``dtype`` and derivative ``order`` (see module doc)."""
    if order not in _ORDERS:
        raise ValueError(f"order must be 1 or 2, got {order}")
    eps = float(jnp.finfo(dtype).eps)
    return eps ** (1.0 / 5.0) if order == 1 else eps ** (1.0 / 6.0)


def _axpy(h, v, x):
    return jax.tree_util.tree_map(lambda vi, xi: xi + h * vi, v, x)


def _offsets(order):
    """Multiples of h at which f is evaluated: ±h/2, ±h (and 0 for order 2)."""
    return (0.5, -0.5, 1.0, -1.0) if order == 1 else (0.5, -0.5, 1.0, -1.0, 0.0)


def directional_derivative(f: Callable, x: Any, v: Any, *, order: int = 1,
                           h: float | None = None) -> float:
    """f'[v] (order 1) or f''[v, v] (order 2) of scalar ``f`` at pytree ``x``.

    All evaluations of ``f`` run in one compiled program (a handful of forward passes),
    so the witness costs one compile whatever the number of leaves.

    Args:
      f: scalar function of one pytree (jit-compatible).
      x: the point; its floating leaves set the dtype of the step.
      v: a direction with the structure of ``x``.
      order: 1 or 2.
      h: step; by default ``step(dtype, order)``.

    Returns:
      A Python float.

    Example::

        >>> import jax.numpy as jnp
        >>> f = lambda x: jnp.sum(x ** 3)
        >>> x, v = jnp.array([1.0, 2.0]), jnp.array([0.6, 0.8])
        >>> round(directional_derivative(f, x, v), 2)  # 3 (0.6 + 4 · 0.8) = 11.4
        11.4
    """
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*leaves)
    h = step(dtype, order) if h is None else h
    offsets = _offsets(order)
    evaluate = jax.jit(lambda x, v: jnp.stack([f(_axpy(c * h, v, x)) for c in offsets]))
    values = [float(fv) for fv in np.asarray(evaluate(x, v))]
    f_half, f_mhalf, f_one, f_mone = values[:4]
    if order == 1:
        d_h = (f_one - f_mone) / (2.0 * h)
        d_half = (f_half - f_mhalf) / h
    else:
        f0 = values[4]
        d_h = (f_one - 2.0 * f0 + f_mone) / (h * h)
        d_half = (f_half - 2.0 * f0 + f_mhalf) / (h * h / 4.0)
    return (4.0 * d_half - d_h) / 3.0


def random_direction(seed: int, x: Any) -> Any:
    """A standard-normal direction shaped like pytree ``x``, scaled to unit 2-norm.

    Drawn by numpy from an integer ``seed`` (a jax.random draw would compile a sampler
    for every new leaf shape, which costs more than a small case itself).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    rng = np.random.default_rng(seed)
    v = [rng.standard_normal(np.shape(leaf)) for leaf in leaves]
    norm = np.sqrt(sum(float(np.vdot(vi, vi)) for vi in v))
    unit = [jnp.asarray(vi / norm, jnp.result_type(leaf))
            for vi, leaf in zip(v, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, unit)
