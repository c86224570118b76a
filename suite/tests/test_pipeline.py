"""The pipeline end to end: cases and studies -> run -> typed results -> report files.

A report is only trustworthy if a failure anywhere reaches its verdict and the exit
code. These tests plant a failing case, a crashing case, a crashing study and a crashing
renderer, and run the real CLI over them.
"""

import dataclasses
import json
import os
import stat
import subprocess
import sys

import pandas as pd
import pytest

from suite import cases as registry
from suite import cli
from suite import studies as study_registry
from suite.report import write_report
from suite.results import Check, Outcome, Results, Status
from suite.run import run_all, run_study
from suite.studies import Study
from suite.tests.planting import nudge_one_element, plant

PASSING = "linear/nonsquare"


def _crashing_build(key, dtype):
    raise RuntimeError("planted: the inputs cannot be built")


def _planted_cases():
    good = registry.get(PASSING)
    failing = plant(good, manual=nudge_one_element)
    crashing = dataclasses.replace(good, name=good.name + "+crashing", build=_crashing_build)
    return [good, failing, crashing]


def _study(name, *, run=None, render=None, passed=True):
    def default_run(*, quick, device):
        return Outcome(figures=dict(answer=42.0, quick=quick),
                       checks=[Check("holds", passed, "planted check")],
                       table=[dict(x=1, y=2.0)])

    def default_render(result, out_dir):
        return f"planted study {result.name}: answer {result.figures['answer']}"

    return Study(name=name, family="linear", title=f"planted {name}", run=run or default_run,
                 render=render or default_render)


def _crash(**_):
    raise ZeroDivisionError("planted: the study crashed")


def _planted_studies():
    return [_study("fine"), _study("crashing", run=_crash)]


@pytest.fixture
def planted_registry(monkeypatch):
    monkeypatch.setattr(registry, "cases", lambda **_: _planted_cases())
    monkeypatch.setattr(study_registry, "studies", lambda **_: _planted_studies())


def test_a_planted_failure_crash_and_crashing_study_reach_the_verdict_and_exit_code(
        planted_registry, tmp_path, capsys):
    code = cli.main(["report", "--device", "cpu", "--out", str(tmp_path), "--dtype", "float64",
                     "--budget", "0.01"])
    out = capsys.readouterr().out
    assert code == 1, out
    folder = tmp_path / "cpu"
    for name in ("report.md", "results.csv", "results.json", "linear.png"):
        assert (folder / name).is_file(), name
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o644, name
    md = (folder / "report.md").read_text()
    assert "**Verdict: FAIL** — 1 of 3 rows pass, 1 fail, 1 error; 1 of 2 studies pass" in md
    assert "linear/nonsquare+planted` float64 **FAIL**" in md
    assert "linear/nonsquare+crashing` float64 **ERROR**: RuntimeError: planted" in md
    assert "Status: **ERROR** — ZeroDivisionError: planted: the study crashed" in md
    assert "planted study fine: answer 42.0" in md
    doc = json.loads((folder / "results.json").read_text())
    assert doc["verdict"]["passed"] is False
    assert [r["status"] for r in doc["rows"]] == ["PASS", "FAIL", "ERROR"]
    assert [(s["name"], s["status"]) for s in doc["studies"]] == [("fine", "PASS"),
                                                                   ("crashing", "ERROR")]
    assert doc["studies"][0]["figures"] == {"answer": 42.0, "quick": False}
    assert "jax:" in doc["environment"]["jax_environment"]
    assert doc["environment"]["git commit"] in md
    csv = pd.read_csv(folder / "results.csv")
    assert list(csv["status"]) == ["PASS", "FAIL", "ERROR", "PASS", "ERROR"]
    assert csv["ratio"].notna().sum() == 2  # the two rows that ran were timed


def test_a_quick_report_writes_its_own_folder_and_leaves_the_full_report_alone(
        planted_registry, tmp_path):
    full = tmp_path / "cpu"
    full.mkdir()
    (full / "report.md").write_text("the committed full report")
    code = cli.main(["report", "--quick", "--device", "cpu", "--out", str(tmp_path),
                     "--dtype", "float64"])
    assert code == 1  # the planted failure
    assert (full / "report.md").read_text() == "the committed full report"
    assert sorted(os.listdir(full)) == ["report.md"]
    md = (tmp_path / "cpu-quick" / "report.md").read_text()
    assert md.startswith("# backprop-suite quick report — cpu")


def test_a_failed_study_check_and_a_crashing_renderer_are_not_passes(tmp_path):
    def broken_render(result, out_dir):
        raise KeyError("planted: the renderer crashed")

    studies = [_study("false", passed=False), _study("unrendered", render=broken_render)]
    results = run_all([], ("float64",), studies=studies, quick=True)
    assert [s.status for s in results.studies] == [Status.FAIL, Status.PASS]
    write_report(results, tmp_path)
    assert [s.status for s in results.studies] == [Status.FAIL, Status.ERROR]
    assert not results.passed
    md = (tmp_path / "report.md").read_text()
    assert "holds: planted check" in md and "render: KeyError" in md


def test_an_all_passing_run_passes_and_an_empty_one_does_not():
    good = run_all([registry.get(PASSING)], ("float64",), studies=[_study("fine")],
                   timing=False)
    assert good.passed and good.rows[0].status is Status.PASS
    assert not Results(rows=[]).passed


def test_bad_options_exit_2_and_leave_the_report_untouched(tmp_path, capsys):
    folder = tmp_path / "cpu"
    folder.mkdir()
    (folder / "report.md").write_text("the committed report")
    for argv in (["--tier", "bogus"], ["--dtype", "float16"], ["--family", "nope"],
                 ["--device", "abacus"], ["--budget", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["report", "--out", str(tmp_path), *argv])
        assert exit_.value.code == 2, argv
        assert "error" in capsys.readouterr().err
    assert (folder / "report.md").read_text() == "the committed report"
    assert sorted(os.listdir(folder)) == ["report.md"]


def test_an_absent_accelerator_is_an_error_not_a_cpu_run(tmp_path, capsys):
    code = cli.main(["report", "--device", "tpu", "--out", str(tmp_path), "--quick"])
    assert code == 2
    assert "no 'tpu' device available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    from suite.version import __version__
    assert capsys.readouterr().out.strip() == f"backprop-suite {__version__}"


def test_list_survives_a_closed_pipe():
    # `backprop-suite list | head`: the reader is gone before the first line is written
    # (the read end is closed while the process still imports JAX), so every write fails.
    proc = subprocess.Popen([sys.executable, "-m", "suite.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_registered_study_declares_a_known_family():
    known = {f.name for f in registry.families()}
    for study in study_registry.studies():
        assert study.family in known, study


def test_a_study_result_carries_its_checks_and_time():
    result = run_study(_study("fine"), quick=True)
    assert result.status is Status.PASS and result.seconds >= 0
    assert result.as_dict()["checks"] == [dict(name="holds", passed=True, detail="planted check")]
