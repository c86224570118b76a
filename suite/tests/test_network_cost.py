"""The network_cost study's renderer on a made-up table (the measurement itself runs in the
report: it compiles and times every program, which make test's budget cannot hold)."""

from __future__ import annotations

from suite.cases.network import param_count
from suite.results import Outcome, Status, StudyResult
from suite.studies import network_cost


def _row(net, p, hessian):
    return dict(net=net, P=p, x="2x3x8x8", grad=1e-3, diagonal=4e-3, hvp=1.1e-3,
                jvp_grad=1e-3, per_sample=1.2e-3, vmap_grad=1e-3, **{"jax.hessian": hessian},
                diagonal_error=1e-15 if hessian else None, hvp_error=1e-16,
                per_sample_error=0.0)


def test_render_writes_the_table_and_the_plot(tmp_path):
    rows = [_row("cnn", 2042, 0.5), _row("transformer", 12970, None)]
    result = StudyResult(name="network_cost", family="network", title="t", status=Status.PASS,
                         outcome=Outcome(table=rows))
    text = network_cost.render(result, str(tmp_path))
    assert "| cnn | 2x3x8x8 | 2042 | 1 ms | 4 ms | 4.00 | 500 ms | 125.00 |" in text
    assert "| transformer | 2x3x8x8 | 12970 | 1 ms | 4 ms | 4.00 | — | — |" in text
    assert (tmp_path / "network_cost.png").stat().st_size > 0


def test_the_three_shapes_are_the_issues():
    sizes = {k: param_count(spec, x) for k, (spec, x, _)
             in network_cost.shapes(quick=False).items()}
    assert sizes == {"cnn": 2042, "resnet": 5258, "transformer": 12970}
