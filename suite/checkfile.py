"""``backprop-suite check FILE.py``: run the checks a user's file declares.

A file declares checks in either (or both) of two forms:

* by calling the checker: every ``check_vjp``, ``check_custom_vjp``, ``check_grad``,
  ``check_hessian`` and ``check_hvp`` call made while the file runs is collected;
* in the registry's own form: every module-level ``suite.cases.Case`` (e.g. from
  ``vjp_case(...)``), or list/tuple of them, is run in each of its dtypes.

The file runs as a module of its own (not ``__main__``), with JAX's settings as the
caller left them (the CLI does not call ``suite.configure()`` for it: ordinary user
code broadcasts implicitly). Nothing the file does can stop the run: an exception
becomes an ERROR row after the checks collected so far.

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mine.py")
    >>> _ = open(path, "w").write(
    ...     "import numpy as np\\n"
    ...     "from suite import check_vjp\\n"
    ...     "check_vjp(lambda x: 3 * x, lambda x, g: 3 * g, np.ones(2), name='triple')\\n")
    >>> [(row.case, str(row.status)) for row in run_file(path).rows]
    [('triple', 'PASS')]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable

import jax

from suite.cases import Case
from suite.check import CheckResult
from suite.check.recording import recording
from suite.results import Results, Row, Status
from suite.run import environment, run_case

__all__ = ["Collected", "collect", "run_file", "recording"]


@dataclasses.dataclass
class Collected:
    """What a file declared: checker results (already run), registry cases (not yet run),
    and the error that stopped the file, if any."""

    path: str
    results: list = dataclasses.field(default_factory=list)
    cases: list = dataclasses.field(default_factory=list)
    error: str = ""
    traceback: str = ""


def _cases_in(namespace: dict) -> list:
    found, seen = [], set()
    for value in namespace.values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, Case) and id(item) not in seen:
                seen.add(id(item))
                found.append(item)
    return found


def collect(path: str) -> Collected:
    """Run the file at ``path`` and collect what it declares.

    Raises:
      ValueError: ``path`` is not a readable .py file.
    """
    if not os.path.isfile(path) or not path.endswith(".py"):
        raise ValueError(f"FILE must be an existing .py file, got {path!r}")
    out = Collected(path=path)
    name = "backprop_check_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)  # the file may import its neighbours
    try:
        with recording() as results:
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # the file's own error: a row, not a crash
                out.error = f"{path} raised {type(err).__name__}: {err}".splitlines()[0]
                out.traceback = traceback.format_exc()
        out.results = list(results)
    finally:
        sys.path.remove(directory)
    out.cases = _cases_in(vars(module))
    return out


def _unique(names: list) -> list:
    seen: dict = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _case_rows(cases: list, device, progress) -> list:
    """The registry's cases through the suite's own runner (float64 scoped on)."""
    rows = []
    for case in cases:
        for dtype in case.dtypes:
            with jax.enable_x64(True):
                row = run_case(case, dtype, device=device, timing=False)
            rows.append(row)
            if progress:
                progress(row, None)
    return rows


def run_file(path: str, *, device=None,
             progress: Callable[[Row, CheckResult | None], None] | None = None) -> Results:
    """Run the checks declared in ``path``; one Row per check (and per case and dtype).

    Args:
      path: a Python file (see the module docstring for what it may declare).
      device: a jax Device for registry cases (default: the default device).
      progress: called with each row (and its CheckResult, for checker calls).

    Returns:
      suite.results.Results: the rows, and the environment they were measured in.

    Raises:
      ValueError: ``path`` is not a .py file, or it declares nothing to check.
    """
    collected = collect(path)
    family = os.path.splitext(os.path.basename(path))[0]
    rows = []
    names = _unique([r.name for r in collected.results])
    for name, result in zip(names, collected.results, strict=True):
        row = result.to_row(case=name, family=family)
        rows.append(row)
        if progress:
            progress(row, result)
    rows += _case_rows(collected.cases, device, progress)
    if collected.error:
        row = Row(case=os.path.basename(path), family=family, dtype="", status=Status.ERROR,
                  message=collected.error, traceback=collected.traceback)
        rows.append(row)
        if progress:
            progress(row, None)
    if not rows:
        raise ValueError(f"{path} declares no checks: call check_vjp (or another check_*) "
                         "in it, or define suite.cases.Case objects at module level")
    return Results(rows=rows, environment=environment(device))
