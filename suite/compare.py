"""The comparison policy: how close a hand-derived result must be to its oracle.

For every output leaf we measure

    max abs error      max_i |a_i - b_i|
    max rel error      max_i |a_i - b_i| / max(|b_i|, REL_FLOOR * max_j |b_j|)
    normwise error     ||a - b||_2 / ||b||_2
    worst index        argmax_i |a_i - b_i|, with a_i and b_i
    frac outside       fraction of i with |a_i - b_i| > atol * max_j |b_j| + rtol * |b_i|

and a leaf passes when its normwise error is within the dtype's tolerance and no element
lies outside the allclose band. ``atol`` is relative to the leaf's largest magnitude:
an entry that is the small remainder of a cancelling sum carries an absolute error of
the order of the sum's terms, not of itself.

Tolerances are one table, keyed by dtype (see TOLERANCES). Finite differences are
judged by their own small table (FD_TOLERANCE): they are a witness, not an oracle.

**Widened by measured amplification** (the user-facing checker, suite/check/; the
registry's cases are judged by the table as it stands). A correct but ill-conditioned
function (saturated softmax, a nearly constant layer-norm row, exp(10x)) amplifies the
rounding of every implementation of its derivative, autodiff's included. The checker
measures that amplification α, in units of the dtype's unit roundoff u, from autodiff
itself (``amplification``), and judges with the row widened by

    w = clip(AMPLIFICATION_SAFETY · α · u / normwise, 1, cap)      (``widening``)

i.e. the user's result may be up to AMPLIFICATION_SAFETY times further from autodiff
than autodiff's own rounding error; ``cap`` (a column of the one table) bounds it.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["REL_FLOOR", "Tolerance", "TOLERANCES", "AMPLIFICATION_SAFETY",
           "AMPLIFICATION_MARGIN", "FD_TOLERANCE",
           "FD_SAFETY", "TRUTH_RATIO", "truth_ratio", "tolerance", "unit_roundoff",
           "amplification", "widening", "LeafReport",
           "Comparison", "band", "compare_leaf", "compare", "witness", "witness_judge"]

# Entries smaller than this fraction of the leaf's largest magnitude have their relative
# error measured against that fraction instead (it keeps max rel error informative).
REL_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class Tolerance:
    normwise: float  # bound on ||a - b|| / ||b||
    rtol: float      # elementwise relative band
    atol: float      # elementwise absolute band, as a fraction of max |b|
    why: str = ""    # the justification, quoted by the report's method section
    cap: float = 1.0  # the largest factor a measured amplification may widen the row by

    def widened(self, factor):
        """This row with all three bounds multiplied by ``factor`` (clipped to [1, cap])."""
        f = min(max(float(factor), 1.0), self.cap)
        return dataclasses.replace(self, normwise=self.normwise * f, rtol=self.rtol * f,
                                   atol=self.atol * f)


# One table. u is the unit roundoff (2^-53 for float64, 2^-24 for float32). Both sides
# compute the same exact quantity in the same precision but in different orders, so they
# differ by accumulated rounding: a sum of K terms is off by about sqrt(K)·u (random-walk
# growth, gamma_K = K·u in the worst case), and each further stage (layer, time step,
# Hessian block) adds its own share times the local condition number.
TOLERANCES = {
    "float64": Tolerance(
        normwise=1e-12, rtol=1e-9, atol=1e-11, cap=1e5,
        why="normwise 1e-12 ≈ 9000·u: room for sqrt(K)·u with K up to ~10^6-term sums and "
            "a few dozen chained stages; a real bug (a missing term, a transposed factor, a "
            "1e-6 relative slip) is 6 orders of magnitude above it. The elementwise band "
            "guards against a single bad entry that a large leaf's norm would hide: 1e-9 "
            "relative and 1e-11 of the leaf's scale are still ~10^5·u. The checker's cap "
            "1e5 widens at most to normwise 1e-7 ≈ 10^9·u, still 100x stricter than the "
            "float32 row and 7 orders below an O(1) bug (a sign, a dropped term); saturated "
            "attention with a gap of 15 between its top two logits needs ~1e-9."),
    "float32": Tolerance(
        normwise=1e-5, rtol=1e-3, atol=1e-5, cap=1e4,
        why="normwise 1e-5 ≈ 170·u: the same budget in float32 units, with the square-root "
            "growth of 10^4-term sums (100·u) and a factor 1.7 for chained stages. rtol 1e-3 "
            "admits float32's poorer relative accuracy on entries that partly cancel; atol "
            "1e-5 of the leaf's scale matches the normwise bound. The checker's cap 1e4 "
            "widens at most to normwise 0.1, which a wrong sign (error 2) or a dropped O(1) "
            "term still exceeds; a tensor that would need more (autodiff itself more than "
            "1% off the float64 truth) is reported as beyond float32, not judged."),
    # The half-precision rows serve the checker only (the registry's cases run in float32
    # and float64); they are judged against autodiff in the same dtype and the float64
    # truth.
    "bfloat16": Tolerance(
        normwise=3e-2, rtol=1e-1, atol=3e-2, cap=10.0,
        why="8 significant bits, u = 2^-8 ≈ 3.9e-3; normwise 3e-2 ≈ 8u: a result rounded "
            "once is within u, a short layer's few dozen roundings, partly cancelling, stay "
            "within ~8u; rtol 0.1 ≈ 25u for entries that partly cancel. Cap 10 stops at "
            "normwise 0.3: a wrong sign (2) or a dropped O(1) term is still caught."),
    "float16": Tolerance(
        normwise=4e-3, rtol=1e-2, atol=4e-3, cap=50.0,
        why="11 significant bits, u = 2^-11 ≈ 4.9e-4; normwise 4e-3 ≈ 8u, rtol 1e-2 ≈ 20u, "
            "as for bfloat16. Cap 50 stops at normwise 0.2."),
}

# How much further from autodiff the checked result may be than autodiff's own measured
# rounding error (see ``widening``): two independent implementations of the same
# formula each carry ~α·u; a factor 10 admits a different but equally valid ordering
# (a fused formula, a different reduction order) without admitting a wrong formula.
AMPLIFICATION_SAFETY = 10.0

# The checker's amplification α is measured (autodiff against the float64 truth) in float32
# and below, but only estimated in float64: from one re-roll of the rounding (inputs moved
# by 2 ulps) and from the float32 shadow. An estimate from one draw can fall short of the
# worst case: on saturated float64 attention (logits up to ~450) the estimate gave 1.7e3 u
# while two correct implementations differ by 2.3e4 u, 13.7 α, beyond the safety factor
# alone. The estimates are therefore multiplied by this margin before the safety factor:
# 4 x 10 = 40 α, 2.9x above that case; a float64 bug (1e-6 relative and up) stays orders
# above 40 α·u for any α the cap admits.
AMPLIFICATION_MARGIN = 4.0

# The checker's float32-and-below rule: the code under test may be at most this many
# times further from the float64 truth than autodiff in the same dtype is (autodiff's
# distance floored at u, so a nearly exact autodiff does not ask yours for less than one
# rounding). Measured by scripts/checker_truth_ratio.py over the checker's corpus in
# float32 (6 seeds): correct layers reach a ratio of 5.3 at most (a GRU step, whose
# hand-written backward sums in another order), the planted bugs that only the truth
# sees come in at 22 at least (a tanh-GELU backward with 0.0447 for 0.044715: 22-57; a
# layer norm's dγ 0.2 % off: 1.3e4 and up). 10 sits between them with a factor ~2 on
# each side.
TRUTH_RATIO = 10.0

# Finite-difference witness (float64 only; see reference/finite_diff.py): the
# Richardson-extrapolated first difference is good to ~eps^(4/5) ≈ 3e-13 and the second
# to ~eps^(2/3) ≈ 4e-11 relative to the derivative's scale, before the O(h^4)
# truncation term, whose constant is the fifth (sixth) derivative along v. A factor
# ~10^3 covers that constant for the smooth functions here; a wrong gradient is off by
# O(1) of its scale.
FD_TOLERANCE = {1: 1e-9, 2: 1e-6}

# With an error estimate of its own (reference.finite_diff.richardson), the witness
# fails only beyond this many times that estimate plus FD_TOLERANCE (``witness_judge``):
# the estimate is already a bound (spread plus rounding), the factor covers its own
# uncertainty (the spread of two extrapolations can cancel by chance).
FD_SAFETY = 4.0


def tolerance(dtype):
    """The Tolerance for ``dtype`` (a name or numpy dtype)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {name}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[name]


def unit_roundoff(dtype):
    """u = eps / 2 of a floating dtype (2^-53 for float64, 2^-24 for float32)."""
    return float(jnp.finfo(dtype).eps) / 2.0


def amplification(low, high, dtype):
    """α: the normwise discrepancy of ``low`` from ``high`` in units of ``dtype``'s u.

    ``low`` is autodiff in ``dtype`` (or on inputs perturbed by a few ulps), ``high``
    the float64 truth (or the unperturbed result). A well-conditioned function gives
    α of a few units; NaN when either side is not finite (nothing was measured).
    """
    a, b = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    norm_b = float(np.linalg.norm(b))
    if norm_b == 0.0:
        return 0.0 if not np.any(a) else math.inf
    return float(np.linalg.norm(a - b)) / norm_b / unit_roundoff(dtype)


def truth_ratio(yours_error, autodiff_error, dtype):
    """How many times further from the float64 truth yours is than autodiff (both
    normwise; autodiff's distance floored at u of ``dtype``); judged against TRUTH_RATIO."""
    return float(yours_error) / max(float(autodiff_error), unit_roundoff(dtype))


def widening(dtype, alpha):
    """(factor, needed): how far the row of ``dtype`` is widened for amplification α.

    ``needed`` is AMPLIFICATION_SAFETY·α·u / normwise unclipped; ``factor`` is it clipped
    to [1, cap]. ``needed > cap`` says that the dtype cannot resolve the result: autodiff
    itself is further from the truth than the widest tolerance allows.
    """
    tol = tolerance(dtype)
    if alpha is None or not math.isfinite(alpha):
        return 1.0, (math.inf if alpha == math.inf else 1.0)
    needed = AMPLIFICATION_SAFETY * alpha * unit_roundoff(dtype) / tol.normwise
    return min(max(needed, 1.0), tol.cap), needed


@dataclasses.dataclass(frozen=True)
class LeafReport:
    path: str
    max_abs: float
    max_rel: float
    normwise: float
    worst_index: tuple
    worst_actual: float
    worst_expected: float
    frac_outside: float
    passed: bool
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Comparison:
    leaves: tuple
    passed: bool
    message: str

    @property
    def worst(self):
        """The leaf with the largest normwise error (failing leaves first)."""
        return max(self.leaves, key=lambda r: (not r.passed, r.normwise))


def _failed_leaf(path, message):
    nan = float("nan")
    return LeafReport(path, nan, nan, math.inf, (), nan, nan, 1.0, False, message)


def band(expected, tol):
    """The allclose band of each element: atol·max|b| + rtol·|b_i| (float64 array)."""
    b = np.abs(np.asarray(expected, np.float64))
    return tol.atol * (float(np.max(b)) if b.size else 0.0) + tol.rtol * b


def compare_leaf(actual, expected, tol, path=""):
    """Measure one leaf against its oracle under Tolerance ``tol``."""
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape:
        return _failed_leaf(path, f"{path}: shape {a.shape} != expected {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not np.all(np.isfinite(b)):
        return _failed_leaf(path, f"{path}: the oracle is not finite")
    if not np.all(np.isfinite(a)):
        return _failed_leaf(path, f"{path}: {int(np.sum(~np.isfinite(a)))} non-finite entries")
    if a.size == 0:
        return LeafReport(path, 0.0, 0.0, 0.0, (), 0.0, 0.0, 0.0, True)
    err = np.abs(a - b)
    scale = float(np.max(np.abs(b)))
    rel = err / np.maximum(np.abs(b), max(REL_FLOOR * scale, np.finfo(np.float64).tiny))
    norm_b = float(np.linalg.norm(b))
    normwise = float(np.linalg.norm(a - b)) / norm_b if norm_b > 0 else float(np.linalg.norm(a))
    outside = err > band(b, tol)
    worst = np.unravel_index(int(np.argmax(err)), a.shape)
    passed = normwise <= tol.normwise and not outside.any()
    message = ""
    if not passed:
        message = (f"{path}: normwise {normwise:.3e} (tol {tol.normwise:.0e}), "
                   f"{int(outside.sum())}/{a.size} outside allclose, worst at "
                   f"{tuple(int(i) for i in worst)}: {a[worst]!r} vs {b[worst]!r}")
    return LeafReport(path, float(err.max()), float(rel.max()), normwise,
                      tuple(int(i) for i in worst), float(a[worst]), float(b[worst]),
                      float(outside.mean()), passed, message)


def compare(actual, expected, dtype):
    """Compare two pytrees leaf by leaf under the tolerance of ``dtype``.

    A mismatch of structure is a failure with a message, never an exception: a broken
    derivation must become a FAIL row, not a crashed report.
    """
    tol = tolerance(dtype)
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(actual)
    flat_b, tree_b = jax.tree_util.tree_flatten_with_path(expected)
    if tree_a != tree_b:
        leaf = _failed_leaf("", f"structure {tree_a} != expected {tree_b}")
        return Comparison((leaf,), False, leaf.message)
    leaves = tuple(compare_leaf(a, b, tol, jax.tree_util.keystr(path) or "out")
                   for (path, a), (_, b) in zip(flat_a, flat_b, strict=True))
    failed = [leaf.message for leaf in leaves if not leaf.passed]
    return Comparison(leaves, not failed, "; ".join(failed))


def _vdot(u, v):  # on the host, in float64: no compile per leaf shape
    return float(sum(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64))
                     for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(v),
                                     strict=True)))


def _norm(u):
    return math.sqrt(_vdot(u, u))


def witness(fd_value, derivative, direction, order, fd_error=0.0):
    """Judge a finite-difference witness against a derivative along ``direction``.

    Args:
      fd_value: f'[v] or f''[v, v] from ``reference.finite_diff``.
      derivative: the gradient (order 1, a pytree of the shape of the point) or the
        dense (P, P) Hessian in ravel_pytree order (order 2).
      direction: v, a pytree of unit 2-norm.
      order: 1 or 2.
      fd_error: the witness's own error estimate (``directional_derivative(...,
        with_error=True)``); it fails only beyond FD_SAFETY times it plus FD_TOLERANCE
        (0: the fixed FD_TOLERANCE alone, as for the registry's cases).

    Returns:
      (error, passed): |fd - <g, v>| / ||g|| (order 1), or |fd - vᵀ H v| / ||H||_F
      (order 2). Dividing by the derivative's norm (the Cauchy-Schwarz bound of the
      projection) keeps the error meaningful when the projection happens to be ~0.
    """
    if order == 1:
        projection, scale = _vdot(derivative, direction), _norm(derivative)
    else:
        v = np.concatenate([np.ravel(np.asarray(leaf, np.float64))
                            for leaf in jax.tree_util.tree_leaves(direction)])
        hess = np.asarray(derivative, np.float64)
        projection, scale = float(v @ hess @ v), float(np.linalg.norm(hess))
    error, _, passed = witness_judge(fd_value, projection, scale, order, fd_error)
    return error, passed


def witness_judge(fd_value, projection, scale, order, fd_error=0.0, slack=0.0):
    """The one judge of a finite-difference witness (the registry's and the checker's).

    |fd - projection| may be at most FD_TOLERANCE[order]·scale + FD_SAFETY·fd_error +
    ``slack`` (the checker's share of its widened tolerance; 0 for the registry).

    Returns:
      (error, tolerance, passed): error = |fd - projection| / scale, the column
      ``fd_error`` of results.csv for every row; tolerance on the same scale.
    """
    scale = max(float(scale), np.finfo(np.float64).tiny)
    bound = FD_TOLERANCE[order] * scale + FD_SAFETY * float(fd_error) + float(slack)
    miss = abs(float(fd_value) - float(projection))
    return miss / scale, bound / scale, miss <= bound


def witness_coordinate(fd_value, diagonal, index, fd_error=0.0):
    """Judge a finite-difference witness e_iᵀ H e_i against a Hessian's diagonal entry i.

    Args:
      fd_value: f''[e_i, e_i] from ``reference.finite_diff`` (a second difference along
        coordinate ``index``).
      diagonal: the Hessian's diagonal, flat, in ravel_pytree order.
      index: the coordinate i.
      fd_error: the witness's own error estimate, as for ``witness``.

    Returns:
      (error, passed): |fd - d_i| / ||d||_2, judged as ``witness`` judges order 2 (the
      norm of the diagonal plays the part of ||H||_F: the scale of the curvature).
    """
    d = np.asarray(diagonal, np.float64)
    scale = max(float(np.linalg.norm(d)), np.finfo(np.float64).tiny)
    error = abs(fd_value - float(d[index])) / scale
    return error, error <= max(FD_TOLERANCE[2], FD_SAFETY * fd_error / scale)
