"""Running an exercise notebook in a real Jupyter kernel (nbclient) and grading it there.

``grade_notebook`` executes the notebook's code cells top to bottom, the learner's own
grading cell excepted, then one cell of its own that calls
``suite.learn.grading.grade_namespace`` with the requested hint level; the grade is read
back from that cell's output. A learner's cell that raises does not stop the run: its
error (type, message, cell and line) heads the report, and the grade still runs, so
every step that can be judged is judged. ``Session`` keeps one kernel for several
notebooks (the tests grade many in one kernel; starting one costs seconds).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

from suite.learn.grading import SENTINEL, check_hint
from suite.learn.notebook import code_cells, exercise_of, is_grade_cell, require_extra

try:  # the optional extra `learn` (suite.learn.notebook.require_extra says how to get it)
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
except ImportError:
    nbformat = KernelManager = NotebookClient = None

__all__ = ["Outcome", "Session", "grade_notebook"]

TIMEOUT_S = 600
# a kernel's start imports JAX: on a loaded 2-core machine that took over nbclient's 60 s
STARTUP_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A graded notebook: ``status`` (PASS, FAIL, NOT ATTEMPTED, ERROR) and the report."""

    exercise: str
    status: str
    text: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def _errors(cell: Any, number: int) -> list[str]:
    found = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            line = ""
            for frame in out.get("traceback", []):
                if "line " in frame or "----> " in frame:
                    line = frame
            at = _line_of(line)
            found.append(f"  cell [{number}] raised {out.get('ename')}: {out.get('evalue')}"
                         + (f" (line {at})" if at else ""))
    return found


def _line_of(frame: str) -> str:
    """The line number of the first '---->' arrow of an IPython traceback frame."""
    for text in _plain(frame).splitlines():
        stripped = text.lstrip()
        if stripped.startswith("---->"):
            number = stripped[5:].split()[0] if stripped[5:].split() else ""
            return number if number.isdigit() else ""
    return ""


def _plain(text: str) -> str:
    """``text`` without ANSI colour codes."""
    out, skip = [], False
    for ch in text:
        if ch == "\x1b":
            skip = True
        elif skip and ch == "m":
            skip = False
        elif not skip:
            out.append(ch)
    return "".join(out)


def _stdout(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


class Session:
    """One Jupyter kernel, kept for the notebooks graded through it (a context manager)."""

    def __init__(self) -> None:
        require_extra()
        # ipc: the kernel's sockets are local files, not TCP ports (no open port, and no
        # "running over TCP without encryption" warning in the learner's terminal); each
        # session's sockets in a folder of its own, since kernels started at once from one
        # folder pick the same socket names and hang (two pytest workers did)
        self._sockets = tempfile.mkdtemp(prefix="backprop-suite-kernel-")
        self._client = NotebookClient(nbformat.v4.new_notebook(), timeout=TIMEOUT_S,
                                      startup_timeout=STARTUP_TIMEOUT_S,
                                      allow_errors=True, kernel_name="python3",
                                      km=KernelManager(kernel_name="python3", transport="ipc",
                                                       ip=os.path.join(self._sockets, "kernel")))
        self._context = None

    def __enter__(self) -> Session:
        self._context = self._client.setup_kernel()
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._context.__exit__(*exc)
        finally:  # a kernel manager passed in is the caller's to shut down: this one is ours
            km = self._client.km
            if km is not None and km.has_kernel:
                km.shutdown_kernel(now=True)
            shutil.rmtree(self._sockets, ignore_errors=True)

    def run(self, source: str) -> Any:
        """Execute one code cell's ``source``; the cell comes back with its outputs."""
        cell = nbformat.v4.new_code_cell(source)
        self._client.nb.cells.append(cell)
        self._client.execute_cell(cell, len(self._client.nb.cells) - 1)
        return cell

    def grade(self, nb: Any, hint: int = 1) -> Outcome:
        """Run ``nb``'s code cells (its grading cell excepted) and grade it at ``hint``."""
        name, hint = exercise_of(nb), check_hint(hint)
        self.run("%reset -f")
        errors, number = [], 0
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            number += 1
            if is_grade_cell(cell):
                continue
            errors += _errors(self.run(cell.source), number)
        call = (f"import suite.learn.grading\nsuite.learn.grading.grade_namespace("
                f"{name!r}, globals(), hint={hint}, cells={json.dumps(code_cells(nb))})")
        graded = self.run(call)
        text = _stdout(graded)
        report, _, status = text.rpartition(SENTINEL)
        status = status.strip()
        if not status:  # the grading cell itself failed: say so, never a raw traceback
            errors += _errors(graded, number + 1)
            return Outcome(name, "ERROR", "\n".join([f"{name}: ERROR"] + errors))
        lines = report.rstrip("\n").splitlines()
        if errors:  # graded as it stands, but a notebook must run top to bottom to pass
            if status == "PASS":
                status = "ERROR"
                lines[0] = f"{name}: ERROR (the steps pass, but a cell raised)"
            lines[1:1] = ["  (a cell raised; the notebook is graded as it stands)"] + errors
        return Outcome(name, status, "\n".join(lines))


def grade_notebook(nb: Any, hint: int = 1) -> Outcome:
    """Grade ``nb`` in a fresh kernel, run top to bottom."""
    with Session() as session:
        return session.grade(nb, hint)
