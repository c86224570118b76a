"""Hints 3 and 4: the equation of a step, quoted from the manual/ docstring that derives
it, and the line of manual/ code that computes it.

Both are found by a marker string (``Step.equation``, ``Step.code``), never by a line
number, so editing manual/ moves the quoted line with it; a marker that no longer occurs
is a ValueError naming it (suite/learn/tests prove every marker of the catalog occurs).
"""

from __future__ import annotations

import ast
import functools
import pathlib

__all__ = ["ROOT", "docstring_lines", "equation_lines", "code_line"]

ROOT = pathlib.Path(__file__).resolve().parents[2]


@functools.cache
def _source(module: str) -> tuple[str, ...]:
    path = ROOT / module
    if not path.is_file():
        raise ValueError(f"module {module!r} is not a file under {ROOT.name}/")
    return tuple(path.read_text(encoding="utf-8").splitlines())


@functools.cache
def docstring_lines(module: str) -> frozenset[int]:
    """The 1-based numbers of the lines of ``module`` that lie inside a docstring."""
    tree = ast.parse("\n".join(_source(module)))
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                inside.update(range(body[0].lineno, body[0].end_lineno + 1))
    return frozenset(inside)


def equation_lines(module: str, markers: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line number, text) of the first docstring line holding each marker, in order."""
    lines, doc = _source(module), docstring_lines(module)
    found = []
    for marker in markers:
        hit = next((i for i, text in enumerate(lines, 1) if i in doc and marker in text), None)
        if hit is None:
            raise ValueError(f"equation marker {marker!r} occurs in no docstring of {module}")
        if (hit, lines[hit - 1]) not in found:
            found.append((hit, lines[hit - 1]))
    return found


def code_line(module: str, marker: str) -> tuple[int, str]:
    """(line number, text) of the first code line (outside docstrings) holding ``marker``."""
    lines, doc = _source(module), docstring_lines(module)
    hit = next((i for i, text in enumerate(lines, 1)
                if i not in doc and marker in text and not text.lstrip().startswith("#")), None)
    if hit is None:
        raise ValueError(f"code marker {marker!r} occurs in no code line of {module}")
    return hit, lines[hit - 1]
