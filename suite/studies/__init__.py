"""Studies: measurements beyond a case's PASS/FAIL, run like cases in the run phase.

A case asks "is this derivative right?". A study asks a question about the derivations
as a whole — does training on the hand-derived gradient follow ``jax.grad`` step for
step, how far does truncated BPTT land from full BPTT, where is the Hessian's negative
curvature — and answers it with figures, a table, plots and its own assertions.

A ``Study`` is declared once, in its own module of this package, with
``register_study``:

    run(quick=..., device=...) -> Outcome   the measurement (suite.results.Outcome):
                                             headline figures, the study's own checks,
                                             a table, and data for the renderer
    render(result, out_dir) -> markdown      the report's text for it; may save plots
                                             into ``out_dir`` (suite.plots)

``suite.run.run_study`` turns a study into a ``StudyResult``: PASS when every check
holds, FAIL when one does not, ERROR when ``run`` raised. The verdict counts in the
report's verdict and in the exit code of ``backprop-suite report``; the figures and the
table go into results.json. ``quick=True`` is the small-size run of
``backprop-suite report --quick``.

Modules are discovered on import, like the families of ``suite.cases``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

from suite.results import Outcome, StudyResult

__all__ = ["Study", "register_study", "studies", "get"]


@dataclasses.dataclass(frozen=True)
class Study:
    """A study: a named measurement with its own verdict and its own report text.

    Attributes:
      name: unique, short ("training", "truncation").
      family: the report section it appears in (a registry family name).
      title: one line for the report's heading.
      run: ``run(*, quick: bool, device) -> Outcome``.
      render: ``render(result: StudyResult, out_dir: str) -> str`` (markdown).
      devices: how many devices of the run's platform it needs (as ``Case.devices``):
        ``backprop-suite report`` leaves it out, with a note, where there are fewer.
    """

    name: str
    family: str
    title: str
    run: Callable[..., Outcome]
    render: Callable[[StudyResult, str], str]
    devices: int = 1


_STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    """Declare a study; its name must be new."""
    if study.name in _STUDIES:
        raise ValueError(f"study {study.name!r} is registered twice")
    _STUDIES[study.name] = study
    return study


def studies(*, family: str | Iterable[str] | None = None,
            names: Iterable[str] | None = None) -> list[Study]:
    """Registered studies (in name order), filtered by family and/or name."""
    if isinstance(family, str):
        family = (family,)
    family = None if family is None else set(family)
    names = None if names is None else set(names)
    for name in names or ():
        if name not in _STUDIES:
            raise ValueError(f"unknown study {name!r}; known: {sorted(_STUDIES)}")
    return [s for n, s in sorted(_STUDIES.items())
            if (family is None or s.family in family) and (names is None or n in names)]


def get(name: str) -> Study:
    """The study called ``name``."""
    if name not in _STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {sorted(_STUDIES)}")
    return _STUDIES[name]


def _discover() -> Any:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
