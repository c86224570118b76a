"""The exercise notebooks, graded in a real Jupyter kernel (nbclient).

For every exercise: the notebook filled with the reference solution PASSes; the blank
notebook is NOT ATTEMPTED (exit 1); a planted wrong step is named at hint 1 with its
cell and line, and hint 2 gives its diagnosis where the mistake has a class. The
expected cell and line come from the notebook's text (where its ``blank("STEP")``
stands), never from the grader. One kernel serves every notebook of the session
(starting one costs seconds); make test grades batchnorm (and its wrong shapes and raising
cells), the rest, and `backprop-suite grade` end to end in a fresh kernel, run
in make test-slow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from suite import cli
from suite.learn import catalog
from suite.learn import cli as learn_cli
from suite.learn.derivation import ROOT, code_line, equation_lines
from suite.learn.grading import Blank, blank, unfilled
from suite.learn.kernel import Outcome, Session
from suite.learn.notebook import code_cells, filled, notebook, source, write

FAST = ("batchnorm",)
NAMES = [e.name for e in catalog.exercises()]
PARAMS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in NAMES]


@pytest.fixture(scope="module")
def kernel():
    with Session() as session:
        yield session


def _where(name: str, step: str) -> tuple[int, int]:
    """(cell, line) of ``blank("step")`` in the notebook, cells counted among code cells."""
    for k, cell in enumerate(code_cells(notebook(name)), 1):
        for i, text in enumerate(cell.splitlines(), 1):
            if f'blank("{step}")' in text:
                return k, i
    raise AssertionError(f"blank({step!r}) not in {name}")


def test_at_least_13_exercises(capsys):
    assert cli.main(["learn", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 13
    for ex in catalog.exercises():
        assert any(line.split()[:3] == [ex.name, ex.family, str(len(ex.steps))]
                   for line in lines), ex.name


@pytest.mark.parametrize("name", NAMES)
def test_notebook_blanks_are_the_catalog_steps(name):
    ex = catalog.get(name)
    text = source(name)
    assert re.findall(r'blank\("(\w+)"\)', text) == [s.name for s in ex.steps]
    assert sum(1 for c in notebook(name).cells if "grade" in c.metadata.get("tags", [])) == 1
    assert not re.findall(r'blank\("\w+"\)', filled(text, ex))


@pytest.mark.parametrize("name", NAMES)
def test_every_hint_marker_occurs_in_manual(name):
    for step in catalog.get(name).steps:
        quoted = equation_lines(step.module, step.equation)
        assert len(quoted) >= 1 and all(any(m in t for _, t in quoted) for m in step.equation)
        number, text = code_line(step.module, step.code)
        assert step.code in text and number > 0


def test_a_missing_marker_is_named():
    with pytest.raises(ValueError, match="no docstring"):
        equation_lines("manual/batchnorm.py", ("no such equation",))
    with pytest.raises(ValueError, match="no code line"):
        code_line("manual/batchnorm.py", "dvar = 'moved away'")


def test_blank_raises_a_not_implemented_error_naming_the_step():
    with pytest.raises(Blank, match="dxhat") as info:
        blank("dxhat")
    assert isinstance(info.value, NotImplementedError)

    def backward(x):
        return blank("dx") + blank("dw")
    assert unfilled(backward) == ["dx", "dw"]


def test_learn_writes_once_and_never_overwrites(tmp_path, capsys):
    assert cli.main(["learn", "batchnorm", "--out", str(tmp_path)]) == 0
    path = tmp_path / "batchnorm.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["learn"]["exercise"] == "batchnorm"
    before = path.read_bytes()
    assert cli.main(["learn", "batchnorm", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err and path.read_bytes() == before
    with pytest.raises(FileExistsError):
        write("batchnorm", tmp_path)
    (tmp_path / "a_file").write_text("")
    assert cli.main(["learn", "linear", "--out", str(tmp_path / "a_file")]) == 2


@pytest.mark.parametrize("argv", [["learn"], ["learn", "nosuch"], ["learn", "--list", "linear"],
                                  ["grade", "x.ipynb", "--hint", "0"],
                                  ["grade", "x.ipynb", "--hint", "5"]])
def test_bad_arguments_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2


def test_a_malformed_notebook_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json")
    assert cli.main(["grade", str(bad)]) == 2
    nb = notebook("linear")
    nb.metadata.pop("learn")
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nb, plain)
    assert cli.main(["grade", str(plain)]) == 2
    assert cli.main(["grade", str(tmp_path / "absent.ipynb")]) == 2
    assert cli.main(["grade", str(tmp_path / "notebook.py")]) == 2
    err = capsys.readouterr().err
    assert "not a valid notebook" in err and "declares no exercise" in err


@pytest.mark.parametrize("name", PARAMS)
def test_reference_solution_passes(name, kernel):
    ex = catalog.get(name)
    outcome = kernel.grade(notebook(name, filled(source(name), ex)))
    assert outcome.status == "PASS", outcome.text


@pytest.mark.parametrize("name", PARAMS)
def test_blank_is_not_attempted(name, kernel):
    outcome = kernel.grade(notebook(name))
    assert outcome.status == "NOT ATTEMPTED", outcome.text
    assert catalog.get(name).steps[0].name in outcome.text


@pytest.mark.parametrize("name", PARAMS)
def test_planted_step_is_named_with_cell_and_line(name, kernel):
    ex = catalog.get(name)
    nb = notebook(name, filled(source(name), ex, wrong=ex.planted))
    cell, line = _where(name, ex.planted.step)
    first = kernel.grade(nb, hint=1)
    assert first.status == "FAIL", first.text
    assert f"first wrong step is {ex.planted.step}" in first.text, first.text
    assert f"cell [{cell}], line {line}" in first.text, first.text
    assert ex.planted.wrong.split("(")[0] in first.text
    assert "hint 2:" not in first.text
    second = kernel.grade(nb, hint=2)
    if ex.planted.diagnosis is not None:
        assert ex.planted.diagnosis in second.text.split("hint 2:")[1], second.text
    third, fourth = kernel.grade(nb, hint=4).text.split("hint 3:")[1].split("hint 4:")
    step = ex.step(ex.planted.step)
    assert all(marker in third for marker in step.equation), third
    assert step.code in fourth and f"{step.module}:" in fourth, fourth


@pytest.mark.slow
@pytest.mark.parametrize("name", ["batchnorm", "omega"])
def test_the_notebook_runs_top_to_bottom_and_grades_in_place(name):
    """As Jupyter runs it: a fresh kernel, every cell in order, the grade cell's own output
    (cells numbered by the kernel's history, as Jupyter shows them)."""
    ex = catalog.get(name)
    nb = notebook(name, filled(source(name), ex, wrong=ex.planted))
    NotebookClient(nb, timeout=600, startup_timeout=300, kernel_name="python3").execute()
    shown = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "")
                    for o in nb.cells[-1].outputs)
    cell, line = _where(name, ex.planted.step)
    assert f"{name}: FAIL" in shown and f"cell [{cell}], line {line}" in shown, shown
    good = notebook(name, filled(source(name), ex))
    NotebookClient(good, timeout=600, startup_timeout=300, kernel_name="python3").execute()
    assert f"{name}: PASS" in good.cells[-1].outputs[0]["data"]["text/plain"]


def test_grade_exit_status(tmp_path, monkeypatch):
    """grade's exit status is 0 only on PASS (the kernel's part is tested above)."""
    path = tmp_path / "linear.ipynb"
    nbformat.write(notebook("linear"), path)
    for status, code in (("PASS", 0), ("FAIL", 1), ("NOT ATTEMPTED", 1), ("ERROR", 1)):
        monkeypatch.setattr(learn_cli, "grade_notebook",
                            lambda nb, hint, s=status: Outcome("linear", s, f"linear: {s}"))
        assert cli.main(["grade", str(path)]) == code


def test_partly_blank_names_what_is_left(kernel):
    ex = catalog.get("batchnorm")
    outcome = kernel.grade(notebook("batchnorm", filled(source("batchnorm"), ex,
                                                        blanks=("dmu", "dx"))))
    assert outcome.status == "NOT ATTEMPTED" and "2 of 10 steps still blank: dmu, dx" in \
        outcome.text


def test_grading_leaves_the_learners_jax_settings_alone(kernel):
    kernel.grade(notebook("batchnorm", filled(source("batchnorm"), catalog.get("batchnorm"))))
    shown = kernel.run("import jax\nprint(jax.config.jax_enable_x64)").outputs[0]["text"]
    assert shown.strip() == "False"   # x64 only inside the grader's scoped context


# More planted mistakes, each of a stated class (the diagnosis fragment to expect), and
# for omega the inheritance rule: a wrong Ω_L makes every Ω_l below wrong too, yet the
# first wrong one named is Ω_L (omega_step fed the true Ω_{l+1} is right).
MORE = [
    ("batchnorm", catalog.Planted("dsigma", "dinv / sigma**2", "sign")),
    ("layernorm", catalog.Planted("dgamma", "jnp.mean(dy * xhat, axis=0)", "1/N")),
    ("omega", catalog.Planted("omega_L", "jnp.einsum('nk,kq->nkq', p, jnp.eye(p.shape[1])) "
                              "- jnp.einsum('nk,nq->nkq', p, p)", "factor N")),
    ("omega", catalog.Planted("h_l", "2 * jnp.einsum('ni,nj,nkq->ikjq', a_hat, a_hat, omega)"
                              ".reshape(a_hat.shape[1] * omega.shape[1], -1)", "factor 2")),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, wrong", MORE, ids=[f"{n}-{w.step}" for n, w in MORE])
def test_more_planted_mistakes(name, wrong, kernel):
    ex = catalog.get(name)
    outcome = kernel.grade(notebook(name, filled(source(name), ex, wrong=wrong)), hint=2)
    cell, line = _where(name, wrong.step)
    assert outcome.status == "FAIL", outcome.text
    assert f"first wrong step is {wrong.step}" in outcome.text, outcome.text
    assert f"cell [{cell}], line {line}" in outcome.text, outcome.text
    assert wrong.diagnosis in outcome.text.split("hint 2:")[1], outcome.text
    if wrong.step == "omega_L":
        assert "wrong only because of it: Ω_2, Ω_1" in outcome.text, outcome.text


def test_a_wrong_shape_gives_expected_and_returned(kernel):
    ex = catalog.get("batchnorm")
    wrong = catalog.Planted("dgamma", "jnp.sum(dy * xhat, axis=1)")   # (N,) where gamma is (D,)
    outcome = kernel.grade(notebook("batchnorm", filled(source("batchnorm"), ex, wrong=wrong)))
    assert outcome.status == "FAIL", outcome.text
    assert "dgamma: expected shape (4,)" in outcome.text and "returned (32,)" in outcome.text
    assert "Traceback" not in outcome.text and "site-packages" not in outcome.text


def test_a_raising_step_is_reported_with_its_line(kernel):
    ex = catalog.get("batchnorm")
    wrong = catalog.Planted("dx", "dxmu + dmu / N + undefined_name")
    outcome = kernel.grade(notebook("batchnorm", filled(source("batchnorm"), ex, wrong=wrong)))
    cell, line = _where("batchnorm", "dx")
    assert outcome.status == "ERROR", outcome.text
    assert "NameError" in outcome.text and f"cell [{cell}], line {line}" in outcome.text
    assert "Traceback" not in outcome.text


def test_a_cell_that_raises_is_reported_and_keeps_the_notebook_from_passing(kernel):
    ex = catalog.get("batchnorm")
    text = filled(source("batchnorm"), ex).replace("    return gamma * xhat + beta\n",
                                                   "    return gamma * xhat + beta\n1 / 0\n")
    outcome = kernel.grade(notebook("batchnorm", text))
    assert outcome.status == "ERROR" and "cell [2] raised ZeroDivisionError" in outcome.text
    assert "all 10 steps right" in outcome.text and "Traceback" not in outcome.text


@pytest.mark.slow
def test_grade_cli_on_the_bessel_mistake(tmp_path, capsys):
    """The Done-when case: exit 1; the step, cell and line; N/(N−1) at hint 2; the equation
    at hint 3 (one fresh kernel, run as `backprop-suite grade` runs it)."""
    ex = catalog.get("batchnorm")
    path = tmp_path / "batchnorm.ipynb"
    nbformat.write(notebook("batchnorm", filled(source("batchnorm"), ex, wrong=ex.planted)),
                   path)
    assert cli.main(["grade", str(path), "--hint", "3"]) == 1
    out = capsys.readouterr().out
    cell, line = _where("batchnorm", "dsq")
    assert "first wrong step is dsq" in out and f"cell [{cell}], line {line}" in out
    assert "N/(N−1)" in out.split("hint 2:")[1]
    assert "var    = 1/M Σ (x - mu)²" in out.split("hint 3:")[1]
    assert json.dumps(out)  # plain text


@pytest.mark.slow
def test_without_the_learn_extra_the_cli_says_how_to_install_it(tmp_path):
    """backprop-suite runs without jupytext and friends; learn NAME and grade exit 2 saying
    which extra to install (a fresh interpreter in which jupytext cannot be imported)."""
    code = ("import sys; sys.modules['jupytext'] = None\n"
            "from suite import cli\n"
            "assert cli.main(['learn', '--list']) == 0\n"
            f"sys.exit(cli.main(['learn', 'linear', '--out', {str(tmp_path)!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "backprop-suite[learn]" in run.stderr and not (tmp_path / "linear.ipynb").exists()
