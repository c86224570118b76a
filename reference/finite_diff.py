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

**An error estimate of its own.** With a third step, h/4, the same extrapolation
gives a second value R(h/2); their spread |R(h/2) - R(h)| estimates the truncation
error of R(h) (the error shrinks 16-fold per halving, so the spread is 15/16 of it),
and the rounding of R(h) is bounded by a multiple of eps·|f|/h (order 1) or
eps·|f|/h² (order 2). The points themselves must be exact (``exact_step``): a step
added to a large x is otherwise rounded by eps·|x|, which no estimate sees.
``richardson`` returns both, so a witness can say "f'[v] = a ± e"
and fail only beyond e: a strongly curved function (exp(10x), a layer norm of a
nearly constant row) widens e honestly instead of failing a fixed 1e-9.

**One-sided differences** from the same points detect kinks::

    D₊(h) = (f(x + h v) - f(x)) / h,   R₊ = 2 D₊(h/2) - D₊(h) = f'₊[v] + O(h²)

and likewise D₋ from x - h v. Where f is differentiable, R₊ and R₋ agree to within
their error estimates; at a kink (relu at 0, a max with a tie) they differ by the jump
in slope, and ``one_sided_disagree`` says so.

Example::

    >>> import numpy as np
    >>> h = 1e-3
    >>> values = np.array([abs(c * h) for c in OFFSETS])   # |x| at its kink, x = 0
    >>> est = richardson(values, h)
    >>> float(est.right), float(est.left), bool(one_sided_disagree(est))
    (1.0, -1.0, True)
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["OFFSETS", "KINK_FACTOR", "Estimate", "step", "probe_step", "exact_step",
           "richardson", "one_sided_disagree", "directional_derivative", "random_direction"]

_ORDERS = (1, 2)

# Multiples of h at which f is evaluated by ``richardson``: the point itself, then
# ±h, ±h/2, ±h/4 (central and one-sided differences both read them).
OFFSETS = (0.0, 1.0, -1.0, 0.5, -0.5, 0.25, -0.25)

# One-sided slopes differ at a kink when their gap exceeds this many times the sum of
# their error estimates (each estimate is itself conservative, see ``richardson``).
KINK_FACTOR = 4.0


class Estimate(NamedTuple):
    """Finite-difference estimates with their error bounds (arrays, any leading shape).

    ``central`` is R(h), the Richardson-extrapolated central difference (for order 2,
    the second difference); ``right`` and ``left`` are the extrapolated one-sided first
    differences (NaN for order 2). Each ``*_error`` is |spread| + rounding bound.
    """

    central: np.ndarray
    central_error: np.ndarray
    right: np.ndarray
    right_error: np.ndarray
    left: np.ndarray
    left_error: np.ndarray


def step(dtype: Any, order: int) -> float:
    """The finite-difference step for ``dtype`` and derivative ``order`` (see module doc)."""
    if order not in _ORDERS:
        raise ValueError(f"order must be 1 or 2, got {order}")
    eps = float(jnp.finfo(dtype).eps)
    return eps ** (1.0 / 5.0) if order == 1 else eps ** (1.0 / 6.0)


def probe_step(dtype: Any) -> float:
    """The step for one-sided (kink-probing) differences: eps^(1/3), ~6e-6 in float64.

    R₊ is O(h²) accurate with rounding O(eps/h), balanced at h = eps^(1/3): good to
    ~eps^(2/3) ≈ 4e-11, and a point is taken for a kink only if one lies within h.
    """
    return float(jnp.finfo(dtype).eps) ** (1.0 / 3.0)


def exact_step(x: ArrayLike, d: ArrayLike) -> np.ndarray:
    """``d`` rounded so that x + c·d is exact in float64 for every c in ``OFFSETS``.

    A step added to a large x is rounded: x + d moves by d ± eps·|x|, an error of
    eps·|x|/|d| in the difference quotient (1e-9 for x ~ 1000, d ~ 2e-4) that no
    extrapolation removes. Rounded to a multiple of 4·ulp(2|x|) per element, every
    c·d (c = ±1, ±1/2, ±1/4) is a multiple of the spacing near x, so the points are
    exact; the direction actually used is the returned step over h.
    """
    x64, d64 = np.asarray(x, np.float64), np.asarray(d, np.float64)
    quantum = 4.0 * np.spacing(2.0 * np.maximum(np.abs(x64), np.abs(d64)))
    return np.round(d64 / quantum) * quantum


def richardson(values: ArrayLike, h: ArrayLike, *, order: int = 1,
               scale: ArrayLike | None = None) -> Estimate:
    """Estimates and error bounds from f evaluated at ``OFFSETS`` times ``h``.

    Args:
      values: (..., 7) float64 values of f(x + c·h·v) for c in ``OFFSETS``.
      h: the step (a scalar or broadcastable to the leading shape).
      order: 1 (first derivative, central and one-sided) or 2 (second, central).
      scale: the magnitude the rounding of f is relative to, e.g. Σ|terms| of a sum
        that cancels (default: max |values|).

    Returns:
      An ``Estimate``; computed on the host in float64.
    """
    if order not in _ORDERS:
        raise ValueError(f"order must be 1 or 2, got {order}")
    f = np.asarray(values, np.float64)
    if f.shape[-1] != len(OFFSETS):
        raise ValueError(f"values must have {len(OFFSETS)} entries on the last axis (OFFSETS), "
                         f"got shape {f.shape}")
    h = np.asarray(h, np.float64)
    eps = np.finfo(np.float64).eps
    mag = np.max(np.abs(f), axis=-1) if scale is None else np.maximum(
        np.asarray(scale, np.float64), np.max(np.abs(f), axis=-1))
    f0, p1, m1, p2, m2, p4, m4 = np.moveaxis(f, -1, 0)
    nan = np.full(np.shape(f0), np.nan)
    if order == 1:
        d1, d2, d4 = (p1 - m1) / (2 * h), (p2 - m2) / h, (p4 - m4) / (h / 2)
        r1, r2 = (4 * d2 - d1) / 3, (4 * d4 - d2) / 3
        # R(h) errs by c·h⁴, R(h/2) by c·h⁴/16: the spread is 15/16 of R(h)'s error;
        # rounding of R(h): D(s) is off by eps·mag/s, so (4·2 + 1)/3 = 3 eps·mag/h
        central_error = 16 / 15 * np.abs(r2 - r1) + 3 * eps * mag / h
        right1 = 2 * (p2 - f0) / (h / 2) - (p1 - f0) / h
        right2 = 2 * (p4 - f0) / (h / 4) - (p2 - f0) / (h / 2)
        left1 = 2 * (f0 - m2) / (h / 2) - (f0 - m1) / h
        left2 = 2 * (f0 - m4) / (h / 4) - (f0 - m2) / (h / 2)
        # R₊ errs by c·h²: the spread is 3/4 of R₊(h)'s error; rounding of R₊(h): D₊(s)
        # is off by 2 eps·mag/s, so 2·4 + 2 = 10 eps·mag/h
        side = 10 * eps * mag / h
        return Estimate(r1, central_error, right1, 4 / 3 * np.abs(right2 - right1) + side,
                        left1, 4 / 3 * np.abs(left2 - left1) + side)
    s1 = (p1 - 2 * f0 + m1) / h**2
    s2 = (p2 - 2 * f0 + m2) / (h / 2) ** 2
    s4 = (p4 - 2 * f0 + m4) / (h / 4) ** 2
    r1, r2 = (4 * s2 - s1) / 3, (4 * s4 - s2) / 3
    # rounding of R(h): S(s) is off by 4 eps·mag/s², so (4·16 + 4)/3 ≈ 23 eps·mag/h²
    return Estimate(r1, 16 / 15 * np.abs(r2 - r1) + 23 * eps * mag / h**2, nan, nan, nan, nan)


def one_sided_disagree(est: Estimate, factor: float = KINK_FACTOR) -> np.ndarray:
    """True where the one-sided slopes differ beyond ``factor`` times their error bounds."""
    gap = np.abs(np.asarray(est.right) - np.asarray(est.left))
    return gap > factor * (np.asarray(est.right_error) + np.asarray(est.left_error))


def _axpy(h, v, x):
    return jax.tree_util.tree_map(lambda vi, xi: xi + h * vi, v, x)


def _offsets(order):
    """Multiples of h at which f is evaluated: ±h/2, ±h (and 0 for order 2)."""
    return (0.5, -0.5, 1.0, -1.0) if order == 1 else (0.5, -0.5, 1.0, -1.0, 0.0)


def directional_derivative(f: Callable[[Any], jax.Array], x: Any, v: Any, *, order: int = 1,
                           h: float | None = None,
                           with_error: bool = False) -> float | tuple[float, float]:
    """f'[v] (order 1) or f''[v, v] (order 2) of scalar ``f`` at pytree ``x``.

    All evaluations of ``f`` run in one compiled program (a handful of forward passes),
    so the witness costs one compile whatever the number of leaves.

    Args:
      f: scalar function of one pytree (jit-compatible).
      x: the point; its floating leaves set the dtype of the step.
      v: a direction with the structure of ``x``.
      order: 1 or 2.
      h: step; by default ``step(dtype, order)``.
      with_error: also return an error estimate (two more evaluations, see
        ``richardson``); the value is the same R(h) either way.

    Returns:
      A Python float, or (value, error estimate) with ``with_error``.

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
    offsets = OFFSETS if with_error else _offsets(order)
    evaluate = jax.jit(lambda x, v: jnp.stack([f(_axpy(c * h, v, x)) for c in offsets]))
    values = [float(fv) for fv in np.asarray(evaluate(x, v))]
    if with_error:
        est = richardson(np.array(values), h, order=order)
        return float(est.central), float(est.central_error)
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
