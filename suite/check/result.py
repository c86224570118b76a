"""What a check returns: ``CheckResult``, one ``TensorResult`` per judged tensor.

A *tensor* is one leaf of what the user's derivative returns: for a VJP, the cotangent
of one primal leaf (named by the argument and the pytree path, ``params['gamma']``);
for a Hessian, the (P, P) matrix. ``str(result)`` is the readable report; the values at
the worst element are given as "yours" (the code under test), "autodiff" (JAX's
autodiff of the same function, in the same dtype) and "finite differences" (float64,
with their own error estimate).

Example::

    >>> r = TensorResult(name="x", argument="x", path="", shape=(3,), dtype="float64",
    ...                  status=Status.PASS, normwise=0.0, tolerance=1e-12)
    >>> CheckResult(function="check_vjp", name="f", status=Status.PASS, dtype="float64",
    ...             tensors=[r]).passed
    True
"""

from __future__ import annotations

import dataclasses
import math

from suite.check.stepresult import AuditRow, StepResult, audit_lines, step_lines
from suite.results import Row, Status

__all__ = ["Kink", "TensorResult", "CheckOutcome", "Witness", "CheckResult", "StepResult",
           "AuditRow"]


@dataclasses.dataclass(frozen=True)
class Kink:
    """An element where the one-sided finite differences disagree.

    ``matched`` says which slope the code under test gave: "left", "right", "between"
    (a value between the two, as a subgradient), or "neither" (then the element FAILs).
    """

    index: tuple
    left: float
    right: float
    yours: float
    autodiff: float
    matched: str


@dataclasses.dataclass
class TensorResult:
    """The verdict on one tensor (one output leaf of the derivative under test).

    Attributes:
      name: the argument's name (or ``arg<i>``) followed by the pytree path.
      normwise: ||yours - autodiff|| / ||autodiff|| in the check's dtype.
      tolerance: the normwise bound used: the table's row widened by ``widening``.
      amplification: α, autodiff's own rounding amplification in units of u (NaN when
        not measured); ``widening`` = clip(10·α·u / table normwise, 1, cap).
      yours, autodiff, finite_differences: values at ``worst_index`` (the finite
        difference in float64, ± ``fd_error``; None when not probed).
      truth_yours, truth_autodiff: for float32/float16/bfloat16 checks, the normwise
        errors of each against autodiff in float64 on the same inputs widened.
      derivation_float64: for those checks, the normwise error of yours run in float64
        (every float its program holds recast) against that truth: the derivation alone.
      resolved: False when the dtype cannot resolve this tensor (autodiff itself is
        further from the float64 truth than the widest tolerance); it is then not judged.
    """

    name: str
    argument: str
    path: str
    shape: tuple
    dtype: str
    status: Status
    normwise: float | None = None
    tolerance: float | None = None
    widening: float = 1.0
    amplification: float = math.nan
    max_abs: float | None = None
    max_rel: float | None = None
    frac_outside: float | None = None
    worst_index: tuple | None = None
    yours: float | None = None
    autodiff: float | None = None
    autodiff_float64: float | None = None
    finite_differences: float | None = None
    fd_error: float | None = None
    truth_yours: float | None = None
    truth_autodiff: float | None = None
    derivation_float64: float | None = None
    resolved: bool = True
    kinks: list = dataclasses.field(default_factory=list)
    message: str = ""


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """One extra check (batched, determinism, zero cotangent, output dtype, ...)."""

    name: str
    status: Status
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Witness:
    """The float64 finite-difference witness along one random unit direction v.

    ``value`` ± ``error`` is the derivative along v; ``yours`` and ``autodiff`` are the
    projections <result, v>; ``verdict`` is "agrees", "disagrees", "kink along v" or
    "inconclusive" (finite differences disagree with autodiff as well).
    """

    value: float
    error: float
    yours: float
    autodiff: float
    tolerance: float
    verdict: str
    scale: float = math.nan  # ||autodiff||, the derivative's norm (compare.witness's scale)


def _g(x, spec=".8g"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def _e(x):
    return _g(x, ".2e")


def _index(name, index):
    if index is None:
        return name
    return f"{name}[{', '.join(str(i) for i in index)}]" if len(index) else name


def _tensor_lines(t: TensorResult, is_low: bool) -> list[str]:
    head = f"  {t.status.value:<5} {t.name}  {t.dtype}{list(t.shape)}"
    if not t.resolved:
        low = t.dtype != "float64"
        return [head + f"  not judged: autodiff's own rounding is amplified {t.amplification:.2g}"
                f" u here, beyond what {t.dtype} can resolve even with the widest tolerance"
                + (" (check it in float64 to judge it)" if low else "")]
    if t.normwise is None:
        return [head + "  judged by one projection only (fast mode)"]
    widened = ""
    if t.widening > 1.0:
        widened = (f", widened x{t.widening:.3g} for a measured rounding amplification of "
                   f"{t.amplification:.3g} u")
    lines = [head + f"  normwise error {_e(t.normwise)} against autodiff "
             f"(tolerance {_e(t.tolerance)}{widened})"]
    if t.worst_index is not None and t.yours is not None:
        fd = "finite differences not probed"
        if t.finite_differences is not None:
            fd = f"finite differences {_g(t.finite_differences)} (± {t.fd_error:.1e})"
        f64 = f", autodiff in float64 {_g(t.autodiff_float64)}" if is_low else ""
        lines.append(f"        worst element {_index(t.name, t.worst_index)}: yours {_g(t.yours)}, "
                     f"autodiff {_g(t.autodiff)}{f64}, {fd}")
    if is_low and t.truth_yours is not None:
        run64 = ("" if t.derivation_float64 is None
                 else f"; yours run in float64 {_e(t.derivation_float64)}")
        lines.append(f"        against the float64 truth: yours {_e(t.truth_yours)}, "
                     f"autodiff {_e(t.truth_autodiff)}{run64}")
    for k in t.kinks:
        said = {"left": "matched the left-sided slope", "right": "matched the right-sided slope",
                "between": "lies between the two slopes",
                "neither": "matches neither slope"}[k.matched]
        lines.append(f"        kink at {_index(t.name, k.index)}: one-sided finite differences "
                     f"left {_g(k.left)}, right {_g(k.right)}; yours {_g(k.yours)} {said} "
                     f"(autodiff {_g(k.autodiff)})")
    if t.message:
        lines.append(f"        {t.message}")
    return lines


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check_* call.

    ``status`` is a ``suite.results.Status`` (a str: compare with "PASS", "FAIL",
    "KINK", "ERROR"); ``str(result)`` is the report; ``to_frame()`` gives one row per
    tensor; ``assert_passed()`` raises AssertionError(str(result)) unless it passed.
    """

    function: str
    name: str
    status: Status
    dtype: str
    mode: str = "full"
    tensors: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    witness: Witness | None = None
    notes: list = dataclasses.field(default_factory=list)
    message: str = ""
    seconds: float = math.nan
    traceback: str = dataclasses.field(default="", repr=False)
    steps: list = dataclasses.field(default_factory=list)       # StepResult (check_steps)
    not_judged: list = dataclasses.field(default_factory=list)  # marks with no adjoint
    after_steps: str = ""                                       # an error after the last step
    audit: list = dataclasses.field(default_factory=list)       # AuditRow (audit=True)
    audit_note: str = ""

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def first_wrong(self) -> StepResult | None:
        """check_steps: the first step whose error is its own (not inherited), or None."""
        return next((s for s in self.steps if s.wrong and not s.inherited), None)

    def assert_passed(self) -> CheckResult:
        """Raise AssertionError(str(self)) unless the status is PASS; return self."""
        if not self.passed:
            raise AssertionError(str(self))
        return self

    @property
    def worst(self) -> TensorResult | None:
        """The judged tensor with the largest normwise error relative to its tolerance."""
        order = {Status.ERROR: 3, Status.FAIL: 2, Status.KINK: 1, Status.PASS: 0}

        def key(t):
            ratio = (t.normwise or 0.0) / t.tolerance if t.tolerance else 0.0
            return order[t.status], t.resolved, ratio
        return max(self.tensors, key=key) if self.tensors else None

    def __str__(self) -> str:
        is_low = self.dtype not in ("float64", "")
        bad = [t.name for t in self.tensors if t.status in (Status.FAIL, Status.KINK)]
        summary = f"{len(self.tensors)} tensor{'s' if len(self.tensors) != 1 else ''}"
        if bad:
            summary += f"; {', '.join(bad)}: {'KINK' if self.status is Status.KINK else 'FAIL'}"
        mode = " (fast mode)" if self.mode == "fast" else ""
        lines = [f"{self.function}({self.name}): {self.status.value} — "
                 f"{self.dtype}{mode}, {summary}"]
        if self.message:
            lines += ["  " + line for line in self.message.splitlines()]
        lines += step_lines(self.steps, self.not_judged, self.after_steps)
        if self.steps or self.not_judged:
            lines.append("  the primals' cotangents (as check_vjp judges them):")
        for t in self.tensors:
            lines += _tensor_lines(t, is_low)
        if self.checks:
            lines.append("  checks: " + " · ".join(f"{c.name} {c.status.value}"
                                                   for c in self.checks))
            lines += [f"    {c.name}: {c.detail}" for c in self.checks if c.detail]
        if self.witness is not None:
            w = self.witness
            lines.append(f"  finite-difference witness along a random direction v: {w.verdict} "
                         f"(finite differences {_g(w.value)} ± {w.error:.1e}, yours "
                         f"{_g(w.yours)}, autodiff {_g(w.autodiff)}, tolerance {w.tolerance:.1e})")
        lines += audit_lines(self.audit, self.audit_note)
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_frame(self):
        """A pandas DataFrame, one row per tensor (output leaf of the derivative)."""
        import pandas as pd
        rows = []
        for t in self.tensors:
            row = {"function": self.function, "check": self.name, "tensor": t.name,
                   "argument": t.argument, "path": t.path, "shape": t.shape, "dtype": t.dtype,
                   "status": t.status.value}
            for f in ("normwise", "tolerance", "widening", "amplification", "max_abs", "max_rel",
                      "frac_outside", "worst_index", "yours", "autodiff", "autodiff_float64",
                      "finite_differences", "fd_error", "truth_yours", "truth_autodiff",
                      "derivation_float64", "resolved"):
                row[f] = getattr(t, f)
            row["kinks"] = len(t.kinks)
            row["message"] = t.message
            rows.append(row)
        for s in self.steps:
            rows.append({"function": self.function, "check": self.name,
                         "tensor": f"step {s.name}", "shape": s.shape, "dtype": self.dtype,
                         "status": s.status.value, "normwise": s.normwise,
                         "tolerance": s.tolerance, "line": s.line, "own": s.own,
                         "inherited": s.inherited, "diagnosis": s.diagnosis,
                         "message": s.message})
        for a in self.audit:
            rows.append({"function": self.function, "check": self.name,
                         "tensor": f"audit {a.transform}", "dtype": self.dtype,
                         "status": a.verdict, "message": a.detail})
        return pd.DataFrame(rows)

    def to_row(self, case: str | None = None, family: str = "check") -> Row:
        """The result as one report row (suite.results.Row), its worst tensor as the leaf."""
        worst = self.worst
        row = Row(case=case or self.name, family=family, dtype=self.dtype, status=self.status,
                  message=self.summary(), traceback=self.traceback)
        if worst is not None:
            row.leaf = worst.name
            row.normwise, row.max_abs, row.max_rel = worst.normwise, worst.max_abs, worst.max_rel
            row.frac_outside, row.tol_normwise = worst.frac_outside, worst.tolerance
            row.worst_index = None if worst.worst_index is None else str(worst.worst_index)
            row.worst_manual, row.worst_reference = worst.yours, worst.autodiff
            row.truth_manual, row.truth_reference = worst.truth_yours, worst.truth_autodiff
        if self.witness is not None:  # compare.witness's meaning: |fd - <g, v>| / ||g||
            w = self.witness
            scale = w.scale if math.isfinite(w.scale) and w.scale > 0 else abs(w.autodiff)
            row.fd_error = abs(w.value - w.yours) / max(scale, 1e-300)
        return row

    def summary(self) -> str:
        """One line: what failed and where (empty for a clean PASS)."""
        parts = [self.message.splitlines()[0]] if self.message else []
        for t in self.tensors:
            if t.status is Status.FAIL and t.message.startswith(f"{t.name}: against the float64"):
                parts.append(t.message)
            elif t.status is Status.FAIL:
                at = _index(t.name, t.worst_index)
                parts.append(f"{t.name}: normwise {_e(t.normwise)} (tol {_e(t.tolerance)}), "
                             f"worst {at}: yours {_g(t.yours)} vs autodiff {_g(t.autodiff)}")
            elif t.status is Status.KINK:
                parts.append(f"{t.name}: {len(t.kinks)} element(s) at a kink")
        parts += [f"{c.name}: {c.detail}" for c in self.checks if c.status is not Status.PASS]
        if self.witness is not None and self.witness.verdict == "disagrees":
            parts.append("finite-difference witness disagrees with yours")
        first = self.first_wrong
        if first is not None:
            said = f" ({first.diagnosis})" if first.diagnosis else ""
            parts.insert(0, f"first wrong step {first.name} at {first.line}{said}")
        parts += [f"audit {a.transform}: WRONG {a.detail}" for a in self.audit
                  if a.verdict == "WRONG"]
        return "; ".join(parts)
