"""What mistake a wrong step is consistent with: a short "consistent with ..." or None.

``diagnose(yours, true, tolerance, sizes)`` tests, in this order, a small stated set of
mistakes, each numerically, on the step's *own* error (yours computed from the true
adjoints of every earlier step, so nothing inherited blurs it):

1. zero where it should not be: yours is exactly zero at elements where the true
   adjoint is not, and right elsewhere;
2. sign flipped: yours = -true;
3. a constant factor: yours = c·true, c named as N/(N−1), (N−1)/N, N or 1/N when N is
   the size of an axis of the primals (or a product of axes of one primal), else given;
4. transposed: yours = trueᵀ (last two axes);
5. error constant along axis k (a missing or extra mean or broadcast term):
   yours - true does not change along axis k;
6. summed over the wrong axis: yours is reduced over other axes than the mark (its
   singleton axes differ), or, shaped alike, keeps the true adjoint's total while
   differing from it (a sum over another axis of the same tensor).

"Matches" means to within ``MATCH`` times the step's judged tolerance (the dtype's row,
widened by the measured rounding amplification): a genuine instance of a mistake
matches to rounding, a different error by far more. ``contribution`` does test 3 (and
2) on one ``adjoint`` call of a summed step: the error equals β·v_j for that call's v_j
when v_j = c·(its true value), c = 1/(1 - β). Only steps already judged wrong are
diagnosed, so correct code never gets one.

Example::

    >>> import numpy as np
    >>> a = np.arange(1.0, 7.0).reshape(2, 3)
    >>> diagnose(-a, a, 1e-12, [(3, "axis 1 of x")])
    'consistent with sign flipped'
    >>> diagnose(a * 3 / 2, a, 1e-12, [(3, "axis 1 of x")])
    'consistent with yours = N/(N−1) × the true adjoint, N = 3 (axis 1 of x)'
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["diagnose", "contribution", "axis_sizes", "factor_name", "MATCH"]

# A mistake matches when the residual is within MATCH x the step's judged tolerance: the
# tolerance bounds rounding (normwise), and the residual of a genuine instance is rounding
# of two results (yours and the truth), each within it; 100 leaves room for the larger
# rounding of the rearranged code, while any other error of a wrong step exceeds its
# tolerance by construction and a different mistake's residual is O(1).
MATCH = 100.0


def axis_sizes(leaves: list) -> list:
    """(N, where) for every axis size > 1 of each primal leaf, and for every product of two
    or more of one leaf's axes; ``leaves`` is [(name, shape)]. Single axes first."""
    singles, products = [], []
    for name, shape in leaves:
        for k, n in enumerate(shape):
            if n > 1:
                singles.append((int(n), f"axis {k} of {name}"))
        big = [k for k, n in enumerate(shape) if n > 1]
        for r in range(2, len(big) + 1):
            for axes in itertools.combinations(big, r):
                n = math.prod(shape[k] for k in axes)
                products.append((int(n), f"axes {', '.join(map(str, axes))} of {name}"))
    return singles + products


def factor_name(c: float, sizes: list, slack: float) -> str | None:
    """yours = c × true: "N/(N−1) × ..., N = 32 (axis 0 of x)" or a plain factor, or None."""
    best = None
    for n, where in sizes:
        forms = [("N/(N−1)", n / (n - 1)), ("(N−1)/N", (n - 1) / n), ("N", float(n)),
                 ("1/N", 1.0 / n)]
        for form, value in forms:
            rel = abs(c / value - 1.0)
            if rel <= slack and (best is None or rel < best[0]):
                best = (rel, f"{form} × the true adjoint, N = {n} ({where})")
    if best is not None:
        return best[1]
    for value, text in ((2.0, "2"), (0.5, "1/2")):
        if abs(c / value - 1.0) <= slack:
            return f"{text} × the true adjoint (a missing or extra factor 2)"
    if abs(c) < 1e-300 or abs(c - 1.0) <= slack:
        return None
    return f"{c:.6g} × the true adjoint (a constant factor no axis size explains)"


def _norm(x):
    return float(np.linalg.norm(x))


def _shape_mistake(y, a):
    """Yours reduced over other axes than the mark: same rank, other singleton axes."""
    ys, as_ = np.shape(y), np.shape(a)
    if len(ys) != len(as_) or ys == as_:
        return None
    y1 = {k for k, n in enumerate(ys) if n == 1}
    a1 = {k for k, n in enumerate(as_) if n == 1}
    if y1 and y1 != a1:
        return (f"consistent with summed over the wrong axis (yours is reduced over axis "
                f"{', '.join(map(str, sorted(y1)))}, the marked value over "
                f"{', '.join(map(str, sorted(a1))) or 'none'})")
    return None


def diagnose(yours: np.ndarray, true: np.ndarray, tolerance: float, sizes: list) -> str | None:
    """The mistake a wrong step's own error is consistent with, or None (see the module)."""
    y, a = np.asarray(yours, np.float64), np.asarray(true, np.float64)
    if y.shape != a.shape:
        return _shape_mistake(y, a)
    thr = MATCH * tolerance
    na = _norm(a)
    if na == 0.0 or not np.all(np.isfinite(y)):
        return None
    scale = float(np.max(np.abs(a)))
    zero = (y == 0.0) & (np.abs(a) > thr * scale)
    if zero.any() and _norm(np.where(zero, 0.0, y - a)) <= thr * na:
        n = int(zero.sum())
        return (f"consistent with zero where it should not be ({n} of {a.size} element"
                f"{'s' if n != 1 else ''})")
    c = float(np.vdot(y, a)) / na**2
    resid = _norm(y - c * a)
    if resid <= thr * max(abs(c), 1e-300) * na:
        if abs(c + 1.0) <= thr:
            return "consistent with sign flipped"
        named = factor_name(c, sizes, max(4.0 * resid / (abs(c) * na), thr / MATCH * 10))
        if named is not None:
            return f"consistent with yours = {named}"
    if a.ndim >= 2 and a.shape[-1] == a.shape[-2] and \
            _norm(y - np.swapaxes(a, -1, -2)) <= thr * na:
        return "consistent with transposed"
    e = y - a
    for k in range(a.ndim):
        if a.shape[k] > 1 and _norm(e - e.mean(axis=k, keepdims=True)) <= thr * na:
            return (f"consistent with error constant along axis {k} (a missing or extra "
                    "mean or broadcast term)")
    if a.size > 1 and abs(float(y.sum()) - float(a.sum())) <= thr * float(np.abs(a).sum()):
        return "consistent with summed over the wrong axis"
    return None


def contribution(error: np.ndarray, values: list, tolerance: float, true_norm: float,
                 sizes: list) -> tuple | None:
    """(index j, diagnosis) when a summed step's own error is one contribution's factor.

    ``error`` is yours - true for the step; ``values`` the contributions v_j its adjoint
    calls gave. If error = β·v_j for exactly one j, then v_j = c·(its true value) with
    c = 1/(1 - β) (c = -1: its sign is flipped).
    """
    e = np.asarray(error, np.float64)
    thr = MATCH * tolerance
    found = []
    for j, v in enumerate(values):
        v = np.asarray(v, np.float64)
        if v.shape != e.shape:
            continue
        nv = _norm(v)
        if nv == 0.0:
            continue
        beta = float(np.vdot(e, v)) / nv**2
        if abs(beta) * nv <= thr * true_norm or _norm(e - beta * v) > thr * true_norm:
            continue
        if abs(beta - 1.0) <= thr:  # v_j should have been zero: not a factor
            continue
        c = 1.0 / (1.0 - beta)
        if abs(c + 1.0) <= thr:
            found.append((j, "consistent with sign flipped (in this contribution)"))
            continue
        named = factor_name(c, sizes, max(thr, 1e-9))
        if named is not None:
            found.append((j, f"consistent with yours = {named} (in this contribution)"))
    return found[0] if len(found) == 1 else None
