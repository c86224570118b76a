"""The checker's verdicts, host-side (numpy only): each tensor, the witness, the result.

How a tensor is judged (the policy is suite/compare.py's, one table for the suite):

1. ``compare_leaf`` of yours against autodiff in the check's dtype, with the dtype's
   row of TOLERANCES widened by the rounding amplification α that autodiff itself
   shows on these inputs (``widen``). In a low precision that cannot resolve a tensor
   at all (autodiff itself off by more than the cap allows), the tensor is reported,
   not judged.
2. For float32/float16/bfloat16 a tensor that misses autodiff passes if it is as close
   to the float64 truth as that same tolerance asks (yours may be the more accurate).
3. Elements outside the band are probed with float64 one-sided finite differences
   (``settle``): where the left and right slopes disagree the element is at a kink
   (KINK, naming the element, both slopes and which one yours matched); where they
   agree and side with yours against autodiff, the element passes. The rest of the
   tensor is still judged.
4. The finite-difference witness along a random direction (``witness``) must agree with
   yours wherever it agrees with autodiff.

Example::

    >>> import numpy as np
    >>> round(normwise(np.array([1.0, 2.0]), np.array([1.0, 2.5])), 4)
    0.1857
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check.kinds import HESSIAN
from suite.check.probes import Probes, polarized, probe_estimate
from suite.check.result import CheckResult, Kink, TensorResult, Witness
from suite.check.runs import Check, FastRun, NativeRuns, as_f64
from suite.results import Status

__all__ = ["widen", "judge_tensors", "judge_tensor", "witness", "result", "fast_result",
           "integer_notes",
           "normwise", "flat_name"]


def widen(dtype: str, ref: np.ndarray, ref_pert: list, truth: np.ndarray | None,
          shadow: np.ndarray | None = None) -> tuple:
    """(amplification, tolerance, needed factor) for one tensor.

    α is the largest of (a) the symmetric second difference of autodiff under a ±2-ulp
    input perturbation, ref(x+δ) - 2 ref(x) + ref(x-δ): the change of the result cancels
    to first order and three independent roundings remain (norm √6 times one); (b) for
    low precision, autodiff's distance from the float64 truth on the same inputs; (c) for
    float64, autodiff's float32 shadow (the inputs rounded to float32) against ref, in
    float32 units; (a) and (c) are estimates from one draw, taken AMPLIFICATION_MARGIN
    times to bound the worst case, (b) is measured. (a) alone can miss: a compiler that
    rounds the perturbed inputs back to the same intermediates (seen with XLA on a GPU)
    re-rolls no rounding at all, while (c) measures how much the function amplifies a
    rounding of its inputs, whatever the device.
    """
    plus, minus = ref_pert
    second = plus + minus - ref  # = ref + (plus - 2 ref + minus): compared with ref below
    margin = cmp.AMPLIFICATION_MARGIN  # (a) and (c) are estimates: an upper bound needs it
    alphas = [margin * cmp.amplification(second, ref, dtype) / math.sqrt(6.0)]
    if truth is not None:
        alphas.append(cmp.amplification(ref, truth, dtype))
    if shadow is not None:
        alphas.append(margin * cmp.amplification(shadow, ref, "float32"))
    finite = [a for a in alphas if math.isfinite(a)]
    alpha = max(finite) if finite else math.nan
    factor, needed = cmp.widening(dtype, alpha)
    return alpha, cmp.tolerance(dtype).widened(factor), needed


def normwise(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (||a|| when b is zero)."""
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / nb if nb > 0 else float(np.linalg.norm(a))


def flat_name(check: Check, g: int) -> str:
    """The name of flat parameter g (ravel_pytree order), e.g. ``w[1, 2]``."""
    offset = 0
    for nm, lf in zip(check.display, check.layout.floats, strict=True):
        size = math.prod(lf.shape)
        if g < offset + size:
            idx = np.unravel_index(g - offset, lf.shape) if lf.shape else ()
            return f"{nm}[{', '.join(str(int(i)) for i in idx)}]" if lf.shape else nm
        offset += size
    return f"[{g}]"


def judge_tensors(check: Check, runs: NativeRuns, truths: tuple | None,
                  probes: Probes | None, yours64: tuple | None = None) -> tuple:
    """(TensorResults, the witness's share per tensor, yours as the witness sees it)."""
    yours, refs = runs.yours, runs.autodiff
    slots = check.kind.slots(check.layout, check.names, check.display, check.dtype, refs)
    tensors, terms, seen = [], [], []
    for k, slot in enumerate(slots):
        pert = [as_f64(p[k]) for p in runs.perturbed]
        shadow = None if runs.shadow is None else as_f64(runs.shadow[k])
        truth = None if truths is None else as_f64(truths[k])
        y64 = None if yours64 is None else as_f64(yours64[k])
        t, term, s = judge_tensor(check, k, slot, yours[k], refs[k], pert, truth, probes, shadow,
                                  y64)
        tensors.append(t)
        terms.append(term)
        seen.append(s)
    if check.kind is HESSIAN and tensors[0].worst_index is not None:
        i, j = tensors[0].worst_index
        tensors[0].message = (tensors[0].message + " " if tensors[0].message else "") + (
            f"(element [{i}, {j}] is ∂²f / ∂{flat_name(check, i)} ∂{flat_name(check, j)})")
    return tensors, terms, seen


def judge_tensor(check: Check, k: int, slot: Any, y: Any, a: Any, a_pert: list,
                 truth: np.ndarray | None, probes: Probes | None,
                 shadow: np.ndarray | None = None, yours64: np.ndarray | None = None) -> tuple:
    """One tensor: (TensorResult, its share of the witness tolerance, yours as the witness
    should see it: with the elements settled at kinks replaced by autodiff's values).

    ``yours64``: for a low-precision check, yours run in float64 (its program retyped);
    it must meet the float64 truth within the check dtype's own (unwidened) row: with the
    rounding gone, what is left is the derivation.
    """
    dtype = check.dtype
    is_low = dtype != "float64"
    y64, a64 = as_f64(y), as_f64(a)
    alpha, tol, needed = widen(dtype, a64, a_pert, truth, shadow)
    base = dict(name=slot.name, argument=slot.argument, path=slot.path,
                shape=tuple(np.shape(y)), dtype=str(np.asarray(y).dtype), amplification=alpha,
                tolerance=tol.normwise, widening=tol.normwise / cmp.tolerance(dtype).normwise)
    if truth is not None:
        base.update(truth_yours=normwise(y64, truth), truth_autodiff=normwise(a64, truth))
    table = cmp.tolerance(dtype)
    e_ad = 0.0 if truth is None else (normwise(a64, truth) or 0.0)
    if needed > table.cap:  # autodiff's own rounding exceeds the widest tolerance
        return (TensorResult(status=Status.PASS, resolved=False, **base),
                needed * table.normwise + e_ad, y64)
    comp = cmp.compare_leaf(y64, a64, tol, slot.name)
    t = TensorResult(status=Status.PASS if comp.passed else Status.FAIL, **base)
    seen = y64
    if not comp.passed and is_low and truth is not None and cmp.compare_leaf(
            y64, truth, tol, slot.name).passed:
        t.status = Status.PASS
        t.message = ("differs from autodiff's result in this dtype but is within the tolerance "
                     "of the float64 truth")
    elif not comp.passed and check.kind.order == 1 and probes is not None:
        seen, comp = _settle(k, t, y64, a64, tol, probes, comp)
    if t.status is Status.PASS and is_low and truth is not None:
        _truth_rule(t, seen, a64, truth, dtype)
    if is_low and truth is not None and yours64 is not None:
        _derivation_rule(t, np.where(seen != y64, truth, yours64), truth, alpha, dtype)
    t.normwise, t.max_abs, t.max_rel = comp.normwise, comp.max_abs, comp.max_rel
    t.frac_outside = comp.frac_outside
    _set_worst(t, comp.worst_index, y64, a64, truth)
    if probes is not None:
        _element_fd(check, k, t, probes)
    if t.status is Status.FAIL and not t.message:
        outside = int(round(comp.frac_outside * max(y64.size, 1)))
        t.message = (f"{outside} of {y64.size} elements outside the band (rtol {tol.rtol:.1e}, "
                     f"atol {tol.atol:.1e} x max|autodiff|)" if outside else
                     "every element is inside the band, but the normwise error is not")
    return t, tol.normwise + e_ad, seen


def _truth_rule(t, seen, a64, truth, dtype):
    """Float32 and below: yours no further from the float64 truth than TRUTH_RATIO times
    autodiff's own distance (elements settled at kinks count as autodiff's values)."""
    e_yours, e_autodiff = normwise(seen, truth), normwise(a64, truth)
    ratio = cmp.truth_ratio(e_yours, e_autodiff, dtype)
    if ratio > cmp.TRUTH_RATIO:
        t.status = Status.FAIL
        t.message = (f"{t.name}: against the float64 truth yours is {e_yours:.2e} off, autodiff "
                     f"{e_autodiff:.2e}: {ratio:.3g}x further (at most {cmp.TRUTH_RATIO:g}x)")


def _derivation_rule(t, yours64, truth, alpha, dtype):
    """Yours run in float64 against the truth, within the check dtype's table row (widened
    only by the function's amplification at float64's u)."""
    table = cmp.tolerance(dtype)
    u64 = cmp.unit_roundoff("float64")
    alpha = alpha if math.isfinite(alpha) else 0.0
    tol = table.widened(cmp.AMPLIFICATION_SAFETY * alpha * u64 / table.normwise)
    comp = cmp.compare_leaf(yours64, truth, tol, t.name)
    t.derivation_float64 = comp.normwise
    if t.status is Status.PASS and not comp.passed:
        t.status = Status.FAIL
        t.message = (f"{t.name}: against the float64 truth, yours run in float64 is "
                     f"{comp.normwise:.2e} off (normwise; tolerance {tol.normwise:.1e}, the "
                     f"{dtype} row): the derivation itself is off, not its rounding")


def _set_worst(t, index, y64, a64, truth):
    if index is None or y64.size == 0:
        return
    t.worst_index = tuple(int(i) for i in index)
    t.yours, t.autodiff = float(y64[index]), float(a64[index])
    if truth is not None:
        t.autodiff_float64 = float(truth[index])


def _element_fd(check, k, t, probes):
    """The finite-difference value at the tensor's worst element, if it was probed."""
    if t.worst_index is None:
        return
    if check.kind.order == 1:
        for j, (kk, i, _) in enumerate(probes.plan):
            if kk == k and np.unravel_index(i, t.shape) == t.worst_index:
                est = probe_estimate(probes, j)
                t.finite_differences, t.fd_error = float(est.central), float(est.central_error)
                return
        return
    meta = probes.elements.get(k)
    if meta is None or probes.dir is None:
        return
    index, plus, minus = meta
    if tuple(int(i) for i in np.atleast_1d(index)) != tuple(t.worst_index):
        return
    value, error = polarized(probes, plus, minus)
    scale = probes.vnorm or 1.0
    t.finite_differences, t.fd_error = value * scale, error * scale


def _settle(k, t, y64, a64, tol, probes, comp):
    """Probe the elements of tensor k outside the band by one-sided finite differences.

    A kink element (the slopes disagree) where yours gives the left or right slope or a
    value between them, and a smooth element where finite differences side with yours
    against autodiff, are settled: they take autodiff's value, and the rest of the
    tensor is judged again. Returns (yours with settled elements replaced, comparison).
    Sets t.kinks, t.status (FAIL, KINK or PASS) and t.message.
    """
    bandv = cmp.band(a64, tol).ravel()
    flat_y, flat_a = y64.ravel(), a64.ravel()
    outside = np.abs(flat_y - flat_a) > bandv
    masked = flat_y.copy()
    probed, kinks, rescued = set(), [], 0
    for j, (kk, i, _) in enumerate(probes.plan):
        if kk != k or i in probed or not outside[i]:
            continue
        probed.add(i)
        est = probe_estimate(probes, j)
        yi, ai = float(flat_y[i]), float(flat_a[i])
        if bool(fdiff.one_sided_disagree(est)):
            kink = _kink(est, yi, ai, bandv[i], np.unravel_index(i, y64.shape))
            kinks.append(kink)
            if kink.matched != "neither":
                masked[i] = ai
        else:
            c = float(est.central)
            slack = cmp.FD_SAFETY * float(est.central_error) + bandv[i]
            if abs(yi - c) <= slack < abs(ai - c):
                masked[i] = ai
                rescued += 1
    t.kinks = kinks
    if not kinks and not rescued:
        return y64, comp
    masked = masked.reshape(y64.shape)
    comp = cmp.compare_leaf(masked, a64, tol, t.name)
    unprobed = int(outside.sum()) - len(probed)
    notes = []
    if kinks:
        notes.append(f"{len(kinks)} element(s) at a kink, judged apart; the other elements "
                     f"{'pass' if comp.passed else 'do not'}")
    if rescued:
        notes.append(f"{rescued} element(s) where finite differences side with yours against "
                     "autodiff")
    if any(kk.matched == "neither" for kk in kinks):
        notes.append("at a kink yours matches neither one-sided slope")
    if unprobed:
        notes.append(f"{unprobed} more elements outside the band were not probed "
                     "(raise max_probes to probe them)")
    if comp.passed and not unprobed:
        t.status = Status.KINK if kinks else Status.PASS
    t.message = "; ".join(notes)
    return masked, comp


def _kink(est, yi, ai, band_i, index):
    """Which one-sided slope yours gave at a kink element."""
    r, l = float(est.right), float(est.left)
    sr = cmp.FD_SAFETY * float(est.right_error) + band_i
    sl = cmp.FD_SAFETY * float(est.left_error) + band_i
    near_r, near_l = abs(yi - r) <= sr, abs(yi - l) <= sl
    if near_r or near_l:
        matched = "right" if near_r and (not near_l or abs(yi - r) <= abs(yi - l)) else "left"
    elif min(l, r) - max(sl, sr) <= yi <= max(l, r) + max(sl, sr):
        matched = "between"
    else:
        matched = "neither"
    return Kink(tuple(int(q) for q in index), l, r, yi, ai, matched)


def witness(check: Check, yours: list, refs: tuple, probes: Probes, terms: list) -> Witness:
    """The float64 finite-difference witness along a random direction."""
    if check.kind.order == 1:
        est = fdiff.richardson(probes.dir, probes.h_dir, order=1, scale=probes.phi_abs)
        value, error = float(est.central), float(est.central_error)
        v = [as_f64(x) for x in probes.vdir]
    else:
        w, vn = probes.witness
        if check.kind is HESSIAN:
            e = fdiff.richardson(probes.dir[0], probes.h_dir, order=2, scale=probes.phi_abs)
            value, error = float(e.central), float(e.central_error)
            p_y = float(w @ as_f64(yours[0]) @ w)
            p_a = float(w @ as_f64(refs[0]) @ w)
            scale = float(np.linalg.norm(as_f64(refs[0])))
            return _verdict(value, error, p_y, p_a, 2, terms[0] * scale, None, scale)
        value, error = polarized(probes, 0, 1)
        value, error, est = value * vn, error * vn, None
        sizes = [math.prod(lf.shape) for lf in check.layout.floats]
        v = [c.reshape(lf.shape) for c, lf in zip(np.split(w, np.cumsum(sizes)[:-1]),
                                                   check.layout.floats, strict=True)]
    p_y = sum(float(np.vdot(as_f64(y), vi)) for y, vi in zip(yours, v, strict=True))
    p_a = sum(float(np.vdot(as_f64(a), vi)) for a, vi in zip(refs, v, strict=True))
    scale = math.sqrt(sum(float(np.vdot(as_f64(a), as_f64(a))) for a in refs))
    share = sum(term * float(np.linalg.norm(as_f64(a))) * float(np.linalg.norm(vi))
                for term, a, vi in zip(terms, refs, v, strict=True))
    return _verdict(value, error, p_y, p_a, check.kind.order, share, est, scale)


def _verdict(value, error, p_y, p_a, order, slack, est, scale):
    """compare.witness_judge on yours' and autodiff's projections: which side it takes."""
    _, tol, yours_ok = cmp.witness_judge(value, p_y, scale, order, error, slack)
    ad_ok = cmp.witness_judge(value, p_a, scale, order, error, slack)[2]
    tol *= max(scale, np.finfo(np.float64).tiny)
    if yours_ok:
        verdict = "agrees"
    elif ad_ok:
        verdict = "disagrees"
    elif est is not None and bool(fdiff.one_sided_disagree(est)):
        verdict = "kink along v"
    else:
        verdict = "inconclusive"
    return Witness(value=value, error=error, yours=p_y, autodiff=p_a, tolerance=tol,
                   verdict=verdict, scale=scale)


def integer_notes(check: Check, integers: tuple) -> list:
    """A note per integer primal that yours returned a derivative for: not judged (an
    integer has no derivative; JAX returns float0), and said whether it is nonzero."""
    leaves = [lf for lf, pos in zip(check.layout.ints, check.layout.int_positions, strict=True)
              if pos >= 0]
    notes = []
    for lf, value in zip(leaves, integers, strict=True):
        value = np.asarray(value)
        name = f"{check.names[lf.arg]}{lf.path}"
        biggest = float(np.max(np.abs(value.astype(np.float64)))) if value.size else 0.0
        what = (f"nonzero (max |·| {biggest:.3g}): an integer primal has no derivative"
                if biggest else "zeros")
        notes.append(f"{check.kind.what} returned {value.dtype}{list(value.shape)} for the "
                     f"integer primal {name} ({lf.dtype}): not judged; it is {what}")
    return notes


def result(check: Check, tensors: list, checks: list, witness: Witness | None,
           integers: tuple = ()) -> CheckResult:
    """The CheckResult: the worst of the tensors', the extra checks' and the witness's."""
    notes = list(check.notes) + integer_notes(check, integers)
    statuses = [t.status for t in tensors] + [c.status for c in checks]
    if witness is not None and witness.verdict == "disagrees":
        statuses.append(Status.FAIL)
    if witness is not None and witness.verdict in ("inconclusive", "kink along v"):
        notes.append(f"the finite-difference witness is {witness.verdict}: finite "
                     "differences disagree with autodiff too, so they judge nothing here")
    status = Status.PASS
    for s in (Status.KINK, Status.FAIL, Status.ERROR):
        if s in statuses:
            status = s
    if not all(t.resolved for t in tensors):
        notes.append(f"some tensors cannot be resolved in {check.dtype} and were not judged; "
                     "check in float64 to judge the derivation there")
    return CheckResult(function=check.function, name=check.name, status=status,
                       dtype=check.dtype, mode=check.opts.mode, tensors=tensors, checks=checks,
                       witness=witness, notes=notes)


def fast_result(check: Check, fast: FastRun) -> CheckResult | None:
    """mode="fast": a PASS on one projection, or None (with a note) for the full check."""
    a, b, n = fast.yours, fast.autodiff, fast.norm
    tol = cmp.tolerance(check.dtype).normwise
    scale = max(n, abs(b), np.finfo(np.float64).tiny)
    error = abs(a - b) / scale
    if math.isfinite(error) and error <= tol:
        tensors = [TensorResult(name=nm, argument=check.names[lf.arg], path=lf.path,
                                shape=lf.shape, dtype=lf.dtype, status=Status.PASS,
                                tolerance=tol)
                   for nm, lf in zip(check.display, check.layout.floats, strict=True)]
        notes = check.notes + [f"fast mode: one projection uᵀJv checked (yours {a:.8g}, "
                               f"autodiff {b:.8g}, relative error {error:.1e}, tolerance "
                               f"{tol:.0e}); elements, extra checks and finite differences "
                               "were not run"]
        return CheckResult(function=check.function, name=check.name, status=Status.PASS,
                           dtype=check.dtype, mode="fast", tensors=tensors, notes=notes)
    check.notes.append(f"fast mode's projection uᵀJv disagreed (yours {a:.8g}, autodiff "
                       f"{b:.8g}, relative error {error:.1e} > {tol:.0e}); the full check was "
                       "run")
    return None


