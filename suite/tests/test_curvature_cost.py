"""The curvature-cost study (suite.studies.curvature_cost), at its quick size.

Slow (ten compiled programs per size, timed, and a dense eigensolve): ``pytest -m slow``
and the report (``report --quick`` runs the same). The study's own checks must hold, its
report text and plot must be written, and an unconverged Lanczos must FAIL it.
"""

import pytest

from manual import spectrum
from suite.results import Status
from suite.run import run_study
from suite.studies import curvature_cost

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result():
    return run_study(curvature_cost.STUDY, quick=True)


def test_the_quick_study_passes_and_renders(result, tmp_path):
    assert result.status is Status.PASS, result.message
    text = result.render(result, str(tmp_path))
    assert "Lanczos" in text and (tmp_path / "stagewise_curvature_cost.png").stat().st_size > 0
    rows = result.outcome.table
    assert [r["P"] for r in rows] == [234, 1450]
    for r in rows:  # every curve measured, positive
        assert all(r[k] > 0 for k in curvature_cost.CURVES + curvature_cost.HVP_CURVES)


def test_an_unconverged_lanczos_fails_the_study(monkeypatch):
    # planted: a Krylov space of K + 2 vectors cannot hold the top 10 to 1e-8
    monkeypatch.setattr(spectrum, "default_iters", lambda dim, k: k + 2)
    monkeypatch.setattr(curvature_cost, "QUICK_HIDDEN", (8,))
    failed = run_study(curvature_cost.STUDY, quick=True)
    assert failed.status is Status.FAIL and "lanczos" in failed.message, failed.message
