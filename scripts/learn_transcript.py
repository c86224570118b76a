"""The README's learners' transcript: grade a batch-norm notebook with Bessel's mistake.

Writes the batchnorm exercise filled with its reference solution except the variance
step, given the planted mistake (dsq = dvar / (N - 1): Bessel's correction where the
forward divides by N), into a temporary ./exercises, then runs `backprop-suite grade`
on it at hints 1, 2 and 3 and prints each command with its output and exit status, the
transcript block of README.md's "Learn by deriving" section.

    PYTHONPATH=. python scripts/learn_transcript.py
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import nbformat

from suite.learn import catalog
from suite.learn.notebook import filled, notebook, source

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> int:
    ex = catalog.get("batchnorm")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "exercises" / "batchnorm.ipynb"
        path.parent.mkdir()
        nbformat.write(notebook("batchnorm", filled(source("batchnorm"), ex, wrong=ex.planted)),
                       path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        for hint in (1, 2, 3):
            flag = [] if hint == 1 else ["--hint", str(hint)]
            print("$ backprop-suite grade exercises/batchnorm.ipynb" + "".join(
                f" {f}" for f in flag))
            run = subprocess.run([sys.executable, "-m", "suite.cli", "grade",
                                  "exercises/batchnorm.ipynb", *flag], cwd=tmp, env=env,
                                 capture_output=True, text=True)
            print(run.stdout, end="")
            print("$ echo $?")
            print(run.returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
