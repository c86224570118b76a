"""Grading an exercise in place: the learner's backward, step by step, by the step checker.

``grade(name, forward, backward)`` runs in the learner's kernel (the notebook's last cell
calls it; ``backprop-suite grade`` appends the same call). It draws the exercise's
float64 inputs inside a scoped ``jax.enable_x64(True)`` (no global setting changes), and
then, in order:

1. blanks left (``blank("STEP")`` still in the backward): NOT ATTEMPTED, naming them;
2. the backward run once by itself: an exception is reported as its type, message and
   the learner's cell and line (never a traceback from inside the suite); a returned
   cotangent of the wrong shape is reported as expected shape against returned shape;
3. ``suite.check_steps(forward, backward, *primals)``: PASS when every step passes, else
   the hint ladder (suite/learn/hints.py) of the first wrong step, the one whose error
   is not inherited from an earlier step.

The only calls into the step checker are ``suite.check_steps``, ``suite.mark`` and
``suite.adjoint`` (the notebooks call the last two).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from suite import check as step_checker
from suite.learn import catalog
from suite.learn.cells import Locator
from suite.learn.hints import MAX_HINT, ladder

__all__ = ["Blank", "blank", "Grade", "grade", "grade_namespace", "SENTINEL", "check_hint",
           "unfilled", "status_name", "raised"]

SENTINEL = "@@backprop-suite-grade@@"


class Blank(NotImplementedError):
    """Raised by a step the learner has not filled in yet."""


def blank(step: str) -> Any:
    """A step still to derive: raises ``Blank`` (a NotImplementedError) naming it.

    >>> blank("dxhat")
    Traceback (most recent call last):
    ...
    suite.learn.grading.Blank: step dxhat is blank: replace blank("dxhat") with its expression
    """
    raise Blank(f'step {step} is blank: replace blank("{step}") with its expression')


@dataclasses.dataclass
class Grade:
    """An exercise's grade: ``status`` PASS, FAIL, NOT ATTEMPTED or ERROR, and the report."""

    name: str
    status: str
    lines: list[str]

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    @property
    def text(self) -> str:
        return "\n".join([f"{self.name}: {self.status}"] + self.lines)

    def __repr__(self) -> str:
        return self.text


def check_hint(hint: Any) -> int:
    """``hint`` as an int in 1..MAX_HINT; ValueError naming it otherwise."""
    if isinstance(hint, bool) or not isinstance(hint, int) or not 1 <= hint <= MAX_HINT:
        raise ValueError(f"hint must be an integer from 1 to {MAX_HINT}, got {hint!r}")
    return hint


def status_name(status: Any) -> str:
    """A step's status as its name (PASS, FAIL, KINK, ERROR), whatever its type."""
    name = getattr(status, "name", None)
    return name if isinstance(name, str) else str(status)


def unfilled(function: Callable) -> list[str]:
    """The steps still blank in ``function``'s source, in order (empty if unreadable)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return []
    return list(dict.fromkeys(re.findall(r"""blank\(\s*["'](\w+)["']\s*\)""", source)))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def raised(what: str, error: BaseException, locator: Locator) -> list[str]:
    """The report lines for the learner's code raising ``error``: type, message, cell, line."""
    where = locator.raised(error)
    at = f" at {where}" if where is not None else ""
    return [f"  {what} raised {_first_line(error)}{at}"]


def _shapes(ex: catalog.Exercise, primals: tuple, grads: Any) -> list[str]:
    """Messages for a returned cotangent tuple of the wrong length or shapes."""
    names = ex.arguments
    if not isinstance(grads, (tuple, list)) or len(grads) != len(primals):
        got = f"a {type(grads).__name__}" if not isinstance(grads, (tuple, list)) else \
            f"{len(grads)} values"
        return [f"  backward must return {len(primals)} cotangents "
                f"({', '.join('d' + n for n in names)}), it returned {got}"]
    bad = []
    for name, p, g in zip(names, primals, grads, strict=True):
        if jnp.shape(g) != jnp.shape(p):
            bad.append(f"  d{name}: expected shape {jnp.shape(p)} (the shape of {name}), "
                       f"returned {jnp.shape(g)}")
    return bad


def grade(name: str, forward: Callable, backward: Callable, *, hint: int = 1,
          cells: list[str] | None = None) -> Grade:
    """Grade the learner's ``backward`` of exercise ``name`` against ``forward``'s autodiff.

    Args:
      name: the exercise (``backprop-suite learn --list``).
      forward: forward(*primals) -> out, marking its intermediates with ``suite.mark``.
      backward: backward(*primals, cotangent) -> the primals' cotangents, handing every
        step to ``suite.adjoint``.
      hint: how many rungs of the hint ladder to show for the first wrong step, 1..4.
      cells: the notebook's code cells, to number cells by their place in the notebook
        (``backprop-suite grade`` passes them); None numbers them as Jupyter shows them.

    Returns:
      A Grade; its repr is the report.
    """
    ex, hint = catalog.get(name), check_hint(hint)
    if ex.kind != "steps":
        raise ValueError(f"exercise {name!r} is graded by second_order.grade, not grade")
    for label, fn in (("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise ValueError(f"{label} must be a function, got {type(fn).__name__}")
    locator = Locator(cells)
    blanks = unfilled(backward)
    if blanks:
        return Grade(name, "NOT ATTEMPTED", [
            f"  {len(blanks)} of {len(ex.steps)} steps still blank: {', '.join(blanks)}"])
    with jax.enable_x64(True):
        primals = ex.inputs()
        try:
            out = forward(*primals)
        except Exception as error:  # the learner's code: report it, never a suite traceback
            return Grade(name, "ERROR", raised("forward", error, locator))
        try:
            grads = backward(*primals, jnp.ones_like(out))
        except Blank as error:
            return Grade(name, "NOT ATTEMPTED", [f"  {error}"])
        except Exception as error:
            return Grade(name, "ERROR", raised("backward", error, locator))
        shape_errors = _shapes(ex, primals, grads)
        if shape_errors:
            return Grade(name, "FAIL", shape_errors)
        try:
            result = step_checker.check_steps(forward, backward, *primals)
        except Exception as error:
            return Grade(name, "ERROR", raised("checking the steps of backward", error,
                                                 locator))
    return _report(ex, result, locator, hint)


def _label(ex: catalog.Exercise, mark: str) -> tuple[catalog.Step | None, str]:
    step = ex.step_of_mark(mark)
    if step is None:
        return None, f"d{mark}"
    return step, step.name if step.marks == mark else f"{step.name} ({mark})"


def _report(ex: catalog.Exercise, result: Any, locator: Locator, hint: int) -> Grade:
    steps = list(result.steps)
    wrong = [s for s in steps if status_name(s.status) in ("FAIL", "ERROR")]
    if not wrong and bool(result.passed):
        return Grade(ex.name, "PASS", [f"  all {len(steps)} steps right"])
    if not wrong:
        return Grade(ex.name, "FAIL", ["  the steps pass but the returned cotangents do not:"]
                     + [f"  {line}" for line in str(result).splitlines()[:6]])
    first = result.first_wrong if result.first_wrong is not None else wrong[0]
    step, label = _label(ex, first.name)
    where = locator.parse(first.line)
    if step is not None and (where is None or where.cell is None):
        where = locator.assignment(step.name) or where
    # later wrong steps: the checker names the first one whose error is its own; the others
    # may only inherit it (fix the first, then grade again)
    others = tuple(_label(ex, s.name)[1] for s in wrong if s.name != first.name)
    if status_name(first.status) == "ERROR":
        detail = f"it could not be judged: {first.diagnosis}" if first.diagnosis else ""
        diagnosis = None
    else:
        detail = f"relative error {first.normwise:.2g}"
        diagnosis = first.diagnosis
    if step is None:
        return Grade(ex.name, "FAIL", [f"  the first wrong step is {label} at {where}"])
    return Grade(ex.name, "FAIL", ladder(step, label, where, diagnosis, hint,
                                         others=others, detail=detail))


def grade_namespace(name: str, namespace: Mapping[str, Any], *, hint: int = 1,
                    cells: list[str] | None = None) -> Grade:
    """Grade exercise ``name`` with the functions found in ``namespace``; print the report
    and a last line ``SENTINEL STATUS`` for ``backprop-suite grade`` to read."""
    ex = catalog.get(name)
    missing = [f for f in ex.functions if not callable(namespace.get(f))]
    if missing:
        result = Grade(name, "ERROR", [f"  not defined: {', '.join(missing)} (run the cell "
                                       "that defines it, and keep its name)"])
    elif ex.kind == "steps":
        result = grade(name, *(namespace[f] for f in ex.functions), hint=hint,
                       cells=cells)
    else:
        result = ex.grader(name, *(namespace[f] for f in ex.functions), hint=hint,
                           cells=cells)
    print(result.text)
    print(SENTINEL, result.status)
    return result
