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

import jax
import jax.numpy as jnp
import numpy as np

_ORDERS = (1, 2)


def step(dtype, order):
    """The finite-difference step for ``dtype`` and derivative ``order`` (see module doc)."""
    if order not in _ORDERS:
        raise ValueError(f"order must be 1 or 2, got {order}")
    eps = float(jnp.finfo(dtype).eps)
    return eps ** (1.0 / 5.0) if order == 1 else eps ** (1.0 / 6.0)


def _axpy(h, v, x):
    return jax.tree_util.tree_map(lambda vi, xi: xi + h * vi, v, x)


def directional_derivative(f, x, v, *, order=1, h=None):
    """f'[v] (order 1) or f''[v, v] (order 2) of scalar ``f`` at pytree ``x``.

    Args:
      f: scalar function of one pytree.
      x: the point; its floating leaves set the dtype of the step.
      v: a direction with the structure of ``x``.
      order: 1 or 2.
      h: step; by default ``step(dtype, order)``.

    Returns:
      A Python float.
    """
    leaves = jax.tree_util.tree_leaves(x)
    dtype = jnp.result_type(*leaves)
    h = step(dtype, order) if h is None else h
    fx = float(f(x)) if order == 2 else 0.0

    def estimate(h):
        plus, minus = float(f(_axpy(h, v, x))), float(f(_axpy(-h, v, x)))
        if order == 1:
            return (plus - minus) / (2.0 * h)
        return (plus - 2.0 * fx + minus) / (h * h)

    return (4.0 * estimate(h / 2.0) - estimate(h)) / 3.0


def random_direction(seed, x):
    """A standard-normal direction shaped like pytree ``x``, scaled to unit 2-norm.

    Drawn by numpy from an integer ``seed`` (a jax.random draw would compile a sampler
    for every new leaf shape, which costs more than a small case itself).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    rng = np.random.default_rng(seed)
    v = [rng.standard_normal(np.shape(leaf)) for leaf in leaves]
    norm = np.sqrt(sum(float(np.vdot(vi, vi)) for vi in v))
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(vi / norm, jnp.result_type(leaf)) for vi, leaf in zip(v, leaves)])
