"""What check_steps and the transform audit add to a CheckResult: ``StepResult``, ``AuditRow``.

A *step* is one name given to ``suite.mark`` in the forward and to ``suite.adjoint`` in
the backward; its StepResult says whether the backward's adjoint of it is right, where
the backward produced it (the line of the ``adjoint`` call), whether its error is its
own or inherited from an earlier step, and, for an error of its own, what mistake it is
consistent with. An ``AuditRow`` is one transform a custom rule was run under.

Example::

    >>> s = StepResult("xhat", Status.FAIL, "mine.py:12", 0.03, "consistent with sign flipped")
    >>> step_lines([s], [])[0]
    '  first wrong step: xhat at mine.py:12 — consistent with sign flipped'
"""

from __future__ import annotations

import dataclasses
import math

from suite.results import Status

__all__ = ["StepResult", "AuditRow", "step_lines", "audit_lines", "AUDIT_NOTE_VJP",
           "AUDIT_NOTE_JVP"]


@dataclasses.dataclass
class StepResult:
    """The verdict on one marked step.

    Attributes:
      name: the name given to mark and adjoint.
      status: PASS, FAIL (wrong, its own error or inherited), KINK (wrong at a point
        where the function has a kink), ERROR.
      line: "path/file.py:NN" of the (first) ``suite.adjoint`` call of this step (of the
        contribution found wrong, when a summed step's error lies in one contribution).
      normwise: ||yours - true|| / ||true|| as the backward ran.
      diagnosis: "consistent with ..." for an error of its own that matches one of the
        stated mistakes; None otherwise (always None on a passing or inheriting step).
      own: the step's own error: normwise of yours against the true adjoint when every
        earlier step was given its true adjoint (NaN if not measured).
      inherited: True when the step is wrong only because an earlier step is.
      tolerance: the judged normwise tolerance (the dtype's row widened as check_vjp does).
      lines: every ``adjoint`` call's line for this step, in order.
      shape: the marked value's shape.
    """

    name: str
    status: Status
    line: str
    normwise: float
    diagnosis: str | None = None
    own: float = math.nan
    inherited: bool = False
    tolerance: float = math.nan
    lines: tuple = ()
    shape: tuple = ()
    message: str = ""

    @property
    def wrong(self) -> bool:
        return self.status is not Status.PASS


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One transform a custom rule was judged under: PASS, RAISES or WRONG."""

    transform: str
    verdict: str          # "PASS", "RAISES", "WRONG"
    detail: str = ""      # RAISES: JAX's first message line; WRONG: the error


AUDIT_NOTE_VJP = ("jax.jvp and jax.jacfwd of a custom_vjp raise by design (it defines no "
                  "forward-mode rule); jax.hessian (jacfwd of jacrev) and grad of grad work "
                  "because they differentiate your backward rule: they are only as right as "
                  "that rule's own derivative (residuals through stop_gradient are right to "
                  "first order and silently wrong to second); a fwd that calls the custom_vjp "
                  "itself (return f(x), residuals) makes them raise as jax.jvp does")
AUDIT_NOTE_JVP = ("reverse mode (jax.vjp, jax.grad) of a custom_jvp transposes your JVP rule: "
                  "it raises when the rule is not linear in the tangents in a way JAX can "
                  "transpose; jax.hessian differentiates your rule itself")


def _e(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2e}"


def step_lines(steps: list, not_judged: list, after: str = "") -> list[str]:
    """The step report: the first wrong step, the steps inheriting its error, every step."""
    lines = []
    first = next((s for s in steps if s.wrong and not s.inherited), None)
    if first is not None:
        said = f" — {first.diagnosis}" if first.diagnosis else ""
        lines.append(f"  first wrong step: {first.name} at {first.line}{said}")
        lines.append(f"    its own error: normwise {_e(first.own)} with every earlier step "
                     f"given its true adjoint (tolerance {_e(first.tolerance)})")
        others = [s for s in steps if s.wrong and not s.inherited and s is not first]
        heirs = [s.name for s in steps if s.inherited]
        if heirs:
            lines.append(f"  inheriting its error: {', '.join(heirs)}")
        if others:
            lines.append("  also wrong on their own: " + ", ".join(
                f"{s.name} at {s.line}" + (f" ({s.diagnosis})" if s.diagnosis else "")
                for s in others))
    elif after:
        lines.append(f"  no marked step is wrong; {after}")
    if steps:
        lines.append(f"  steps ({len(steps)}, in the order the backward produced them):")
        width = max(len(s.name) for s in steps)
        for s in steps:
            why = ("inherited" if s.inherited else "own error") if s.wrong else ""
            lines.append(f"    {s.status.value:<5} {s.name:<{width}}  {s.line}  normwise "
                         f"{_e(s.normwise)} (tolerance {_e(s.tolerance)})"
                         + (f"  {why}" if why else "") + (f"  {s.message}" if s.message else ""))
    if not_judged:
        lines.append(f"  not judged (marked, but the backward gave no adjoint): "
                     f"{', '.join(not_judged)}")
    return lines


def audit_lines(rows: list, note: str) -> list[str]:
    """The audit's rows, one line each, and what JAX does by design."""
    if not rows:
        return []
    width = max(len(r.transform) for r in rows)
    lines = ["  transform audit:"]
    for r in rows:
        lines.append(f"    {r.verdict:<6} {r.transform:<{width}}" +
                     (f"  {r.detail}" if r.detail else ""))
    if note:
        lines.append(f"    ({note})")
    return lines
