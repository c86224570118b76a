"""The checkpointed-BPTT memory study (suite.studies.bptt_memory), at its quick size.

Slow (six compiled backward passes per cell, timed): ``pytest -m slow`` and the report
(``report --quick`` runs the same). The study's own checks must hold, its report text and
plot must be written, and a memory bound the measurement cannot meet must FAIL it.
"""

import pytest

from suite.results import Status
from suite.run import run_study
from suite.studies import bptt_memory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result():
    return run_study(bptt_memory.STUDY, quick=True)


def test_the_quick_study_passes_and_renders(result, tmp_path):
    assert result.status is Status.PASS, result.message
    text = result.render(result, str(tmp_path))
    assert "k=√T" in text and (tmp_path / "bptt_memory.png").stat().st_size > 0
    rows = {(r["cell"], r["strategy"]): r for r in result.outcome.table}
    assert len(rows) == 12
    for cell in ("rnn", "lstm"):
        # memory falls with k from T to √T; autodiff without checkpointing needs the most
        assert (rows[cell, "k=√T"]["temp_mib"] < rows[cell, "k=100"]["temp_mib"]
                < rows[cell, "full"]["temp_mib"] < rows[cell, "jax.vjp"]["temp_mib"])


def test_an_unmet_memory_bound_fails_the_study(monkeypatch):
    # planted: a bound of 0.1% that no segment length meets at T = 400
    monkeypatch.setattr(bptt_memory, "MEMORY_BOUND", 0.001)
    failed = run_study(bptt_memory.STUDY, quick=True)  # run reads the bound when called
    assert failed.status is Status.FAIL and "√T memory" in failed.message
