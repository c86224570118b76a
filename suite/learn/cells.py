"""Where the learner's code is: a source file and line, told as a notebook cell and line.

IPython compiles each cell under a file name of its own (ipykernel names it by a hash of
the cell's text), so a code location ``/tmp/ipykernel_1/378004914.py:14`` is line 14 of
one cell. ``Locator`` rebuilds that map from the kernel's input history (``In``): cell
``[n]`` is the n-th executed cell, the number Jupyter prints beside it, which for a
notebook run top to bottom is its n-th code cell. Outside IPython (a notebook exported
to a script) a location stays ``file.py:NN``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import traceback

__all__ = ["Where", "Locator"]


@dataclasses.dataclass(frozen=True)
class Where:
    """A place in the learner's code: ``cell`` (None outside a notebook), ``line``, ``text``."""

    file: str
    line: int
    text: str
    cell: int | None = None

    def __str__(self) -> str:
        place = f"cell [{self.cell}], line {self.line}" if self.cell is not None else \
            f"{os.path.basename(self.file)}:{self.line}"
        return f"{place}: {self.text.strip()}" if self.text.strip() else place


class Locator:
    """Maps code locations to cells, from the running IPython's history (if any)."""

    def __init__(self, cells: list[str] | None = None) -> None:
        """``cells``: the notebook's code cells in order (cell [k] is the k-th); None to
        number the cells by the kernel's input history, as Jupyter shows them."""
        self.cells: dict[str, tuple[int, str]] = {}   # file basename -> (cell, source)
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        history = shell.user_ns.get("In", []) if shell is not None else []
        namer = getattr(getattr(shell, "compile", None), "get_code_name", None)
        numbered = enumerate(history) if cells is None else enumerate([""] + list(cells))
        for n, source in numbered:
            if n == 0 or not isinstance(source, str) or namer is None:
                continue
            name = os.path.basename(str(namer(source, source, n)))
            self.cells[name] = (n, source)

    def where(self, file: str, line: int) -> Where:
        """The cell and text of ``file``'s line ``line`` (text from the file, else blank)."""
        found = self.cells.get(os.path.basename(file))
        if found is not None:
            cell, source = found
            lines = source.splitlines()
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            return Where(file, line, text, cell)
        text = ""
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                lines = f.read().splitlines()
            text = lines[line - 1] if 0 < line <= len(lines) else ""
        return Where(file, line, text)

    def parse(self, location: str) -> Where | None:
        """``"file.py:NN"`` (as ``StepResult.line`` gives it) -> Where; None if unparsable."""
        file, _, line = str(location).rpartition(":")
        if not file or not line.isdigit():
            return None
        return self.where(file, int(line))

    def assignment(self, name: str) -> Where | None:
        """The latest cell line assigning ``name`` (``name = ...`` or ``name += ...``)."""
        pattern = re.compile(rf"^\s*{re.escape(name)}\s*(\+|-)?=(?!=)")
        for file, (cell, source) in sorted(self.cells.items(), key=lambda kv: -kv[1][0]):
            for i, text in enumerate(source.splitlines(), 1):
                if pattern.match(text):
                    return Where(file, i, text, cell)
        return None

    def raised(self, error: BaseException) -> Where | None:
        """The innermost frame of ``error``'s traceback that lies in the learner's cells."""
        frames = traceback.extract_tb(error.__traceback__)
        mine = [f for f in frames if os.path.basename(f.filename) in self.cells]
        if not mine:
            return None
        frame = mine[-1]
        return self.where(frame.filename, frame.lineno)
