"""``backprop-suite learn`` and ``backprop-suite grade``: the exercises and their grading.

    learn --list                 the exercises, one line each: name, family, steps, source
    learn NAME [--out DIR]       write DIR/NAME.ipynb (default ./exercises); never overwrite
                                 a file (exit 2, saying so)
    grade FILE.ipynb [--hint K]  run the notebook in a fresh kernel and grade it: exit 0 all
                                 pass, 1 wrong or unattempted, 2 malformed

suite/cli.py adds the two sub-commands (``add_commands``) and hands them here (``run``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from suite.learn import catalog
from suite.learn.hints import MAX_HINT
from suite.learn.kernel import grade_notebook
from suite.learn.notebook import read, require_extra, write

__all__ = ["add_commands", "run", "COMMANDS"]

COMMANDS = ("learn", "grade")


def _hint(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer 1..{MAX_HINT}, got {text!r}") \
            from None
    if not 1 <= value <= MAX_HINT:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_HINT}, got {value}")
    return value


def _exercise(text: str) -> str:
    try:
        return catalog.get(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_commands(sub: Any) -> None:
    """Add ``learn`` and ``grade`` to the CLI's sub-command parsers (argparse's
    ``add_subparsers()`` object)."""
    learn = sub.add_parser("learn", help="write an exercise notebook (learn --list: the list)")
    learn.add_argument("name", nargs="?", type=_exercise, help="the exercise")
    learn.add_argument("--list", action="store_true", help="list the exercises")
    learn.add_argument("--out", default="exercises",
                       help="folder for NAME.ipynb (default ./exercises)")
    grade = sub.add_parser("grade", help="grade an exercise notebook step by step")
    grade.add_argument("file", help="the exercise's .ipynb")
    grade.add_argument("--hint", type=_hint, default=1,
                       help=f"hints 1..K for a wrong step (1..{MAX_HINT}, default 1)")


def _list() -> int:
    rows = [(e.name, e.family, f"{len(e.steps)} steps", e.source) for e in catalog.exercises()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``learn`` or ``grade``; the exit status."""
    if not (args.command == "learn" and args.list):
        try:
            require_extra()
        except RuntimeError as err:
            print(f"backprop-suite {args.command}: error: {err}", file=sys.stderr)
            return 2
    if args.command == "learn":
        if args.list == (args.name is not None):
            print("backprop-suite learn: error: give either --list or one exercise NAME",
                  file=sys.stderr)
            return 2
        if args.list:
            return _list()
        try:
            path = write(args.name, args.out)
        except OSError as err:  # the file exists (never overwritten), or DIR is unusable
            print(f"backprop-suite learn: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {path}; open it in Jupyter, fill in the blanks, then "
              f"`backprop-suite grade {path}`")
        return 0
    try:
        nb = read(args.file)
    except ValueError as err:
        print(f"backprop-suite grade: error: {err}", file=sys.stderr)
        return 2
    try:
        outcome = grade_notebook(nb, args.hint)
    except (TimeoutError, RuntimeError) as err:  # a cell ran past the limit; the kernel died
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"backprop-suite grade: the notebook could not be run to the end: "
              f"{type(err).__name__}: {first}", file=sys.stderr)
        return 1
    print(outcome.text)
    return 0 if outcome.passed else 1
