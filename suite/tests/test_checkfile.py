"""``backprop-suite check FILE.py``: the examples, the registry's own form, errors.

Run in process (cli.main), under rank promotion "allow" for the examples: they are
ordinary user code, and the CLI's check does not switch JAX to the suite's settings.
"""

import json
import os
import pathlib
import runpy
import textwrap

import jax
import pytest

from suite import checkfile, cli

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def _run(capsys, *argv):
    with jax.numpy_rank_promotion("allow"):
        code = cli.main(["check", *map(str, argv)])
    return code, capsys.readouterr()


def test_the_correct_example_exits_0_and_writes_the_report(capsys, tmp_path):
    code, out = _run(capsys, EXAMPLES / "custom_layer.py", "--out", tmp_path)
    assert code == 0, out.out + out.err
    assert "PASS  layer_norm float64" in out.out and "PASS  layer_norm float32" in out.out
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["verdict"]["passed"] and len(document["rows"]) == 2
    assert "## custom_layer" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "results.csv").exists()


def test_the_buggy_example_exits_1_naming_the_wrong_tensor(capsys):
    code, out = _run(capsys, EXAMPLES / "custom_layer_buggy.py")
    assert code == 1
    assert "FAIL  x  float64[8, 32]" in out.out and "FAIL  x  float32[8, 32]" in out.out
    assert "worst element x[" in out.out and "finite differences" in out.out


def test_a_file_in_the_registrys_own_form(capsys, tmp_path):
    path = tmp_path / "cases.py"
    path.write_text(textwrap.dedent("""
        import jax.numpy as jnp
        from suite.cases.common import normal, split, vjp_case

        def build(key, dtype):
            k = split(key, ["x", "w", "dy"])
            return dict(x=normal(k["x"], (4, 3), dtype), w=normal(k["w"], (3, 2), dtype),
                        dy=normal(k["dy"], (4, 2), dtype))

        def forward(x, w):
            return jnp.tanh(x @ w)

        def backward(x, w, dy):
            dz = dy * (1 - jnp.tanh(x @ w) ** 2)
            return dz @ w.T, x.T @ dy  # BUG: dw uses dy, not dz

        case = vjp_case(name="mine/dense", family="mine", build=build, forward=forward,
                        backward=backward, primals=("x", "w"))
    """))
    code, out = _run(capsys, path)
    assert code == 1
    results = checkfile.run_file(str(path))
    assert [(r.case, r.dtype, str(r.status)) for r in results.rows] == [
        ("mine/dense", "float32", "FAIL"), ("mine/dense", "float64", "FAIL")]
    assert ".dw" in results.rows[0].message


def test_a_file_that_raises_keeps_its_checks_and_adds_an_error_row(capsys, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import numpy as np\nfrom suite import check_vjp\n"
                    "check_vjp(lambda x: 2 * x, lambda x, g: 2 * g, np.ones(3), name='ok')\n"
                    "raise RuntimeError('the file stops here')\n")
    code, out = _run(capsys, path)
    assert code == 1 and "PASS  ok" in out.out and "the file stops here" in out.out


@pytest.mark.parametrize("content, why", [(None, "must be an existing .py file"),
                                          ("x = 1\n", "declares no checks")])
def test_usage_errors_exit_2(capsys, tmp_path, content, why):
    path = tmp_path / "nothing.py"
    if content is not None:
        path.write_text(content)
    code, out = _run(capsys, path if content is not None else os.fspath(path) + ".missing")
    assert code == 2 and why in out.err


@pytest.mark.slow  # the CLI's exit code is tested above; this is the script's own
def test_the_buggy_example_run_as_a_script_exits_1(capsys):
    with jax.numpy_rank_promotion("allow"), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(EXAMPLES / "custom_layer_buggy.py"), run_name="__main__")
    assert stop.value.code == 1, capsys.readouterr().out
