"""The data that flows from the run phase to the report: typed rows and study results.

Nothing here computes anything. A ``Row`` is one (case, dtype, device) comparison of the
hand-derived side (``manual``) with its oracle (``reference``: JAX autodiff, or a
formula autodiff evaluates); a ``StudyResult`` is one study (training, curvature, ...)
with its headline figures, its tables and its own verdict. ``Results`` carries both,
with the environment they were measured in, to the report writer.

Example::

    >>> row = Row(case="linear/basic", family="linear", dtype="float64", status=Status.PASS)
    >>> row.status.passed, row.as_dict()["status"]
    (True, 'PASS')
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Status", "Row", "COLUMNS", "Check", "Outcome", "StudyResult", "Results", "worst"]


class Status(str, enum.Enum):
    """The verdict of one row, one check or one study.

    PASS   within the tolerance (and every witness agrees)
    FAIL   the derivative is wrong (or a study's own assertion does not hold)
    KINK   at a point where one-sided derivatives disagree: no derivative is right or
           wrong there (the user-facing checker reports it; the suite's cases avoid kinks)
    ERROR  something raised: the case, the oracle or the study could not be computed
    """

    PASS = "PASS"
    FAIL = "FAIL"
    KINK = "KINK"
    ERROR = "ERROR"

    @property
    def passed(self) -> bool:
        return self is Status.PASS

    @property
    def bad(self) -> bool:
        """FAIL or ERROR: what makes a report's verdict FAIL and its exit code non-zero."""
        return self in (Status.FAIL, Status.ERROR)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class Row:
    """One comparison: a case in one dtype on one device (see suite.run.run_case).

    Errors are those of the worst output leaf (``leaf``); ``truth_*`` are, for float32
    rows, the normwise errors of each side against the float64 oracle on the same inputs
    widened; times are of the jit-compiled functions (compile once, run median).
    """

    case: str
    family: str
    dtype: str
    device: str = ""
    sizes: str = ""
    status: Status = Status.ERROR
    leaf: str | None = None
    normwise: float | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    frac_outside: float | None = None
    worst_index: str | None = None
    worst_manual: float | None = None
    worst_reference: float | None = None
    tol_normwise: float | None = None
    fd_error: float | None = None
    truth_manual: float | None = None
    truth_reference: float | None = None
    compile_manual_s: float | None = None
    compile_reference_s: float | None = None
    run_manual_s: float | None = None
    run_reference_s: float | None = None
    ratio: float | None = None
    message: str = ""
    traceback: str = dataclasses.field(default="", repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The row's columns (COLUMNS order), status as its name, without the traceback."""
        out = {name: getattr(self, name) for name in COLUMNS}
        out["status"] = str(self.status)
        return out


COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Row) if f.name != "traceback")


@dataclasses.dataclass(frozen=True)
class Check:
    """One assertion a study makes about its own numbers ("trajectories agree to 1e-10")."""

    name: str
    passed: bool
    detail: str = ""


@dataclasses.dataclass
class Outcome:
    """What a study's ``run`` returns.

    Attributes:
      figures: headline numbers (name -> number or short string); they go to
        results.json and are quoted in the report.
      checks: the study's own assertions; any failed check makes the study FAIL.
      table: rows of the study's main table (dicts with the same keys), for
        results.json and the report.
      data: anything else the study's renderer needs (spectra, curves); not serialised.
    """

    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    checks: list[Check] = dataclasses.field(default_factory=list)
    table: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    data: Any = None


@dataclasses.dataclass
class StudyResult:
    """A study after the run phase: its outcome (or the error that stopped it) and verdict."""

    name: str
    family: str
    title: str
    status: Status
    message: str = ""
    seconds: float = math.nan
    outcome: Outcome | None = None
    traceback: str = dataclasses.field(default="", repr=False)
    # the study's renderer, (result, out_dir) -> markdown; the report calls it
    render: Callable[[StudyResult, str], str] | None = dataclasses.field(default=None,
                                                                         repr=False)

    @property
    def figures(self) -> dict[str, Any]:
        return {} if self.outcome is None else self.outcome.figures

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: name, family, title, status, message, seconds, figures, checks, table."""
        outcome = self.outcome or Outcome()
        return dict(name=self.name, family=self.family, title=self.title,
                    status=str(self.status), message=self.message, seconds=self.seconds,
                    figures=dict(outcome.figures),
                    checks=[dataclasses.asdict(c) for c in outcome.checks],
                    table=list(outcome.table))


@dataclasses.dataclass
class Results:
    """Everything a report is written from: rows, studies, and where they were measured."""

    rows: list[Row]
    studies: list[StudyResult] = dataclasses.field(default_factory=list)
    environment: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def statuses(self) -> list[Status]:
        return [r.status for r in self.rows] + [s.status for s in self.studies]

    @property
    def passed(self) -> bool:
        """True when nothing is FAIL or ERROR and there is at least one row or study."""
        statuses = self.statuses()
        return bool(statuses) and not any(s.bad for s in statuses)


def worst(values: Iterable[float | None]) -> float | None:
    """The largest finite-or-inf value, ignoring None and NaN (None if there is none)."""
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return max(kept) if kept else None
