"""The exercises' catalog: what each exercise asks, its steps, its reference solution.

An exercise is a notebook (suite/learn/notebooks/NAME.py, jupytext percent format) and
one ``Exercise`` entry here. The notebook is what the learner sees: the statement, the
forward with its intermediates marked (``suite.mark``), and a backward with one
``blank("STEP")`` per step of the derivation, each handed to ``suite.adjoint``. The
entry is what the teacher keeps: the reference expression of every step, the planted
mistake the tests make, and where in ``manual/`` the derivation of each step is written
(a marker string that a test proves still occurs there, so a hint never points at a
line that moved).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

__all__ = ["Step", "Planted", "Exercise", "register", "exercises", "get"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One blank of the backward.

    Attributes:
      name: the blank's name, from the math (``dxhat``, ``delta_l``, ``omega_l``): the
        learner fills ``blank("<name>")``.
      marks: a regular expression matching the ``suite.mark`` names whose adjoint this
        step computes (``"xhat"``; ``"h[0-9]+"`` for a step inside a loop over time).
      solution: the reference expression that replaces ``blank("<name>")``.
      module: the manual/ module that derives it (``"manual/batchnorm.py"``).
      equation: marker strings, each occurring in that module's docstrings; hint 3 quotes
        every line that holds one.
      code: a marker string occurring in that module's code; hint 4 quotes its line.
      meaning: a few words for the learner (what the step is the derivative of).
    """

    name: str
    marks: str
    solution: str
    module: str
    equation: tuple[str, ...]
    code: str
    meaning: str = ""

    def owns(self, mark: str) -> bool:
        """Whether the adjoint of ``mark`` is computed by this step."""
        return re.fullmatch(self.marks, mark) is not None


@dataclasses.dataclass(frozen=True)
class Planted:
    """The planted mistake the tests grade: ``step``'s blank filled with ``wrong``.

    ``diagnosis`` is a fragment the step checker's diagnosis must contain (e.g.
    ``"N/(N−1)"``), or None where the mistake belongs to no stated class.
    """

    step: str
    wrong: str
    diagnosis: str | None = None


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One exercise.

    Attributes:
      name: the notebook's name (``backprop-suite learn NAME``).
      family: the manual/ family it derives (``batchnorm``).
      source: the source note the derivation follows.
      steps: the blanks, in the order the backward fills them.
      inputs: builds the primals (float64; called inside ``jax.enable_x64(True)``).
      planted: the mistake the tests plant.
      arguments: the primals' names, in order (``("x", "gamma", "beta")``).
      functions: the names of the learner's functions the grader takes, in order.
      grader: None to grade with ``suite.check_steps``; otherwise the grading function
        (suite/learn/second_order.py's ``grade``), called as
        ``grader(name, *functions, hint=hint)``.
    """

    name: str
    family: str
    source: str
    steps: tuple[Step, ...]
    inputs: Callable[[], tuple]
    planted: Planted
    arguments: tuple[str, ...]
    functions: tuple[str, ...] = ("forward", "backward")
    grader: Callable | None = None

    @property
    def kind(self) -> str:
        """``"steps"`` (graded by suite.check_steps) or ``"second_order"``."""
        return "steps" if self.grader is None else "second_order"

    def step(self, name: str) -> Step:
        """The step called ``name``; ValueError naming the known ones otherwise."""
        for s in self.steps:
            if s.name == name:
                return s
        raise ValueError(f"exercise {self.name!r} has no step {name!r}; its steps are "
                         f"{', '.join(s.name for s in self.steps)}")

    def step_of_mark(self, mark: str) -> Step | None:
        """The step whose adjoint is ``mark`` (None for a mark no step owns)."""
        return next((s for s in self.steps if s.owns(mark)), None)


_EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the catalog (a second one of a name is a ValueError)."""
    if exercise.name in _EXERCISES:
        raise ValueError(f"exercise {exercise.name!r} is registered twice")
    _EXERCISES[exercise.name] = exercise
    return exercise


def exercises() -> tuple[Exercise, ...]:
    """Every exercise, in catalog order."""
    return tuple(_EXERCISES.values())


def get(name: str) -> Exercise:
    """The exercise called ``name``; ValueError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in _EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose from {', '.join(_EXERCISES)}")
    return _EXERCISES[name]
