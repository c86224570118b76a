"""The checker's extra checks on first- and second-order results, host-side.

``batched`` (yours under ``vmap`` over two linear arguments equals the two calls),
``determinism`` (two runs identical), ``zero cotangent`` (a zero linear argument gives
zeros), ``output dtype`` (each result has its primal's dtype). Each returns a
``CheckOutcome``; ``extra_checks`` runs those the options ask for.

Example::

    >>> import numpy as np
    >>> determinism_check((np.ones(2),), (np.ones(2),), ["x"]).status
    <Status.PASS: 'PASS'>
"""

from __future__ import annotations

import math

import numpy as np

from suite import compare as cmp
from suite.check.result import CheckOutcome
from suite.check.runs import Check, NativeRuns, as_f64, first_line
from suite.results import Status

__all__ = ["extra_checks", "batched_check", "determinism_check", "zero_check", "dtype_check"]


def extra_checks(check: Check, runs: NativeRuns, names: list, widenings: list) -> list:
    """The extra checks the options ask for, in order: batched, determinism, zero, dtype."""
    kind, opts = check.kind, check.opts
    tols = [cmp.tolerance(check.dtype).widened(w) for w in widenings]
    out = []
    if kind.linear and opts.batched:
        out.append(batched_check(runs, names, tols))
    if opts.determinism:
        out.append(determinism_check(runs.yours, runs.again, names, opts.nondet_tol))
    if kind.linear and opts.zero:
        out.append(zero_check(runs.zero, runs.autodiff, names, tols))
    if opts.dtype:
        out.append(dtype_check(runs.yours, kind.wanted_dtypes(check.layout, check.dtype), names))
    return out


def batched_check(runs: NativeRuns, names: list, tols: list) -> CheckOutcome:
    if runs.batched_error is not None:
        return CheckOutcome("batched", Status.ERROR,
                            f"vmap of yours raised {first_line(runs.batched_error)} "
                            "(pass batched=False to skip this check)")
    loop = (runs.yours, runs.second)
    for k, nm in enumerate(names):
        for b in range(2):
            comp = cmp.compare_leaf(as_f64(runs.batched[k][b]), as_f64(loop[b][k]), tols[k], nm)
            if not comp.passed:
                at = comp.worst_index
                return CheckOutcome("batched", Status.FAIL,
                                    f"{nm}: under vmap over cotangents, batch entry {b} differs "
                                    f"from the unbatched call (normwise {comp.normwise:.1e}; at "
                                    f"{at}: {comp.worst_actual:.8g} vs {comp.worst_expected:.8g})")
    return CheckOutcome("batched", Status.PASS)


def determinism_check(first: tuple, second: tuple, names: list,
                      nondet_tol: float = 0.0) -> CheckOutcome:
    """Two runs of yours: bitwise identical (nondet_tol 0), or within nondet_tol of each
    other, max|run1 - run2| / max|run1| per tensor. The detail gives what was measured."""
    worst, where = 0.0, None
    for nm, a, b in zip(names, first, second, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b)
        if same:
            continue
        diff = np.abs(as_f64(a) - as_f64(b))
        diff = np.where(np.isnan(diff), np.inf, diff)
        i = np.unravel_index(int(np.argmax(diff)), a.shape) if a.size else ()
        scale = float(np.max(np.abs(as_f64(a)))) if a.size else 0.0
        rel = float(diff[i]) / scale if scale > 0 else math.inf
        if where is None or rel > worst:
            worst = rel
            where = (f"{nm}: two runs differ, e.g. at {tuple(int(q) for q in i)}: "
                     f"{float(as_f64(a)[i]):.17g} then {float(as_f64(b)[i]):.17g}")
    if where is None:
        detail = "bitwise identical" if nondet_tol else ""
        return CheckOutcome("determinism", Status.PASS, detail)
    measured = f"largest run-to-run difference {worst:.2e} of max|yours|"
    if worst <= nondet_tol:
        return CheckOutcome("determinism", Status.PASS,
                            f"{measured} <= nondet_tol {nondet_tol:.1e} ({where})")
    allowed = f"nondet_tol {nondet_tol:.1e}" if nondet_tol else "bitwise (nondet_tol=0)"
    return CheckOutcome("determinism", Status.FAIL, f"{where}; {measured}, allowed {allowed}")


def zero_check(zeros: tuple, refs: tuple, names: list, tols: list) -> CheckOutcome:
    for nm, z, a, tol in zip(names, zeros, refs, tols, strict=True):
        z, scale = as_f64(z), float(np.max(np.abs(as_f64(a)))) if np.size(a) else 0.0
        bad = ~np.isfinite(z) | (np.abs(z) > tol.atol * scale)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), z.shape) if z.size else ()
            return CheckOutcome("zero cotangent", Status.FAIL,
                                f"{nm}: a zero cotangent gives {float(z[i]):.8g} at "
                                f"{tuple(int(q) for q in i)} (a VJP is linear: it must give 0)")
    return CheckOutcome("zero cotangent", Status.PASS)


def dtype_check(yours: tuple, want: list, names: list) -> CheckOutcome:
    wrong = [f"{nm} is {np.asarray(y).dtype}, its primal is {w}"
             for nm, y, w in zip(names, yours, want, strict=True) if np.asarray(y).dtype.name != w]
    if wrong:
        return CheckOutcome("output dtype", Status.FAIL, "; ".join(wrong))
    return CheckOutcome("output dtype", Status.PASS)
