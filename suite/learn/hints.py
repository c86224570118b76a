"""The hint ladder of a wrong step, cumulative: ``--hint K`` prints hints 1 to K.

1. which step is wrong, with its cell and line (and the later wrong steps, which may
   only inherit its error);
2. the diagnosis, verbatim from the step checker ("consistent with a factor N/(N−1) ...");
3. the equation, quoted from the derivation in the manual/ docstring;
4. the line of manual/ code that computes it.
"""

from __future__ import annotations

from suite.learn.catalog import Step
from suite.learn.cells import Where
from suite.learn.derivation import code_line, equation_lines

__all__ = ["MAX_HINT", "ladder"]

MAX_HINT = 4


def ladder(step: Step, label: str, where: Where | None, diagnosis: str | None, hint: int,
           *, others: tuple[str, ...] = (), inherited: tuple[str, ...] = (),
           detail: str = "") -> list[str]:
    """The lines of hints 1..``hint`` for the wrong ``step`` (shown as ``label``).

    ``inherited``: later steps known to be wrong only because of it; ``others``: later
    wrong steps that may only inherit its error (the checker does not say which)."""
    place = str(where) if where is not None else "(its line was not found)"
    lines = [f"  hint 1: the first wrong step is {label} ({step.meaning}) at {place}"]
    if detail:
        lines.append(f"          {detail}")
    if inherited:
        lines.append(f"          later steps wrong only because of it: {', '.join(inherited)}")
    if others:
        lines.append(f"          also wrong, perhaps only through it (fix it first): "
                     f"{', '.join(others)}")
    if hint >= 2:
        lines.append("  hint 2: " + (diagnosis if diagnosis else
                                      "no diagnosis: the error fits none of the known mistakes "
                                      "(a sign, a factor N, 1/N or N/(N−1), a transpose, a "
                                      "missing mean or broadcast, a wrong axis, a zero)"))
    if hint >= 3:
        lines.append(f"  hint 3: the derivation, {step.module}:")
        lines.extend(f"          {text.strip()}" for _, text in
                     equation_lines(step.module, step.equation))
    if hint >= 4:
        number, text = code_line(step.module, step.code)
        lines.append(f"  hint 4: the code that computes it, {step.module}:{number}:")
        lines.append(f"          {text.strip()}")
    if hint < MAX_HINT:
        lines.append(f"  (--hint {hint + 1} for the next hint)")
    return lines
