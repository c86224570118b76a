"""The exercise notebooks: kept as jupytext percent text, written out as .ipynb, read back.

The repository keeps each notebook as suite/learn/notebooks/NAME.py in jupytext's
percent format (it diffs as code); ``write`` converts it to NAME.ipynb for the learner.
A notebook names its exercise in its metadata (``learn: {exercise: NAME}``), and its
grading cell carries the tag ``grade``.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

from suite.learn import catalog

try:  # the optional extra `learn`; the rest of backprop-suite runs without it
    import jupytext
    import nbformat
except ImportError as missing:
    jupytext = nbformat = None
    _MISSING = missing.name
else:
    _MISSING = None

__all__ = ["NOTEBOOKS", "require_extra", "source", "notebook", "write", "read", "exercise_of",
           "code_cells", "is_grade_cell", "filled"]

NOTEBOOKS = pathlib.Path(__file__).resolve().parent / "notebooks"


def require_extra() -> None:
    """RuntimeError saying how to install the extra ``learn`` when a package of it is missing."""
    if _MISSING is not None:
        raise RuntimeError(f"the exercise notebooks need the optional extra `learn` ({_MISSING} "
                           f"is not installed): pip install 'backprop-suite[learn]'")


def source(name: str) -> str:
    """The percent-format text of exercise ``name``'s notebook."""
    catalog.get(name)
    return (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8")


def notebook(name: str, text: str | None = None) -> Any:
    """Exercise ``name``'s notebook (from ``text`` if given, else its kept source)."""
    require_extra()
    nb = jupytext.reads(source(name) if text is None else text, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    return nb


def write(name: str, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Write ``out_dir/name.ipynb``; FileExistsError if it exists (never overwritten)."""
    nb = notebook(name)
    out = pathlib.Path(out_dir)
    path = out / f"{name}.ipynb"
    if path.exists():
        raise FileExistsError(f"{path} exists; it is never overwritten (move it, or pass "
                              f"--out to write elsewhere)")
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        nbformat.write(nb, f)
    return path


def read(path: str | pathlib.Path) -> Any:
    """Read and validate an exercise notebook; ValueError saying what is malformed."""
    require_extra()
    path = pathlib.Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"FILE must be a .ipynb notebook, got {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"no such notebook: {str(path)!r}")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except (ValueError, nbformat.ValidationError, KeyError, AttributeError,
            TypeError) as error:  # nbformat's NotJSONError and JSONDecodeError are ValueErrors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise ValueError(f"{path} is not a valid notebook: {first}") from None
    exercise_of(nb, path)
    return nb


def exercise_of(nb: Any, path: str | pathlib.Path = "notebook") -> str:
    """The exercise a notebook declares; ValueError when it declares none or an unknown one."""
    name = nb.metadata.get("learn", {}).get("exercise")
    if not isinstance(name, str):
        raise ValueError(f"{path} declares no exercise (metadata learn.exercise); write it "
                         f"with `backprop-suite learn NAME`")
    catalog.get(name)
    return name


def is_grade_cell(cell: Any) -> bool:
    """Whether ``cell`` is the notebook's own grading cell (tag ``grade``)."""
    return cell.cell_type == "code" and "grade" in cell.metadata.get("tags", [])


def code_cells(nb: Any) -> list[str]:
    """The sources of the notebook's code cells, in order (cell [k] is the k-th)."""
    return [c.source for c in nb.cells if c.cell_type == "code"]


def filled(text: str, exercise: catalog.Exercise, *, wrong: catalog.Planted | None = None,
           blanks: tuple[str, ...] = ()) -> str:
    """``text`` with every ``blank("STEP")`` replaced by the step's reference expression,
    except the steps in ``blanks`` (left blank) and ``wrong.step`` (given ``wrong.wrong``).
    For teachers and the tests; a step absent from ``text`` is a ValueError."""
    for step in exercise.steps:
        pattern = re.compile(rf"""blank\(\s*["']{re.escape(step.name)}["']\s*\)""")
        if not pattern.search(text):
            raise ValueError(f"blank({step.name!r}) does not occur in the notebook of "
                             f"{exercise.name!r}")
        if step.name in blanks:
            continue
        expression = wrong.wrong if wrong is not None and wrong.step == step.name else \
            step.solution
        text = pattern.sub(lambda _, e=expression: e, text)
    return text
