"""``backprop-suite bench --out DIR``: the bench table through the one report writer.

The timed rows become report rows (their check is the status), each extra a section of
its family with the lines it printed and the table it returned; an extra that raises is
an ERROR in the verdict, never a lost bench.
"""

import json

import pandas as pd

from suite import bench, cli
from suite import cases as registry


def test_bench_out_writes_the_table_through_the_report_writer(tmp_path, monkeypatch):
    def floor(*, device, echo):
        echo("floor line 12.5 ms")
        return [dict(P=10, full=0.5)]

    def broken(*, device, echo):
        raise RuntimeError("planted")

    # one small test-tier case of each family stands in for its (large) bench cases
    small = [registry.cases(family=(f,), tiers=("test",))[0] for f in ("embedding", "layernorm")]
    monkeypatch.setattr(bench, "registered_cases", lambda family, tiers: small)
    monkeypatch.setattr(bench, "EXTRAS", {"embedding": floor, "layernorm": broken})
    code = cli.main(["bench", "--family", "embedding,layernorm", "--dtype", "float32",
                     "--budget", "0.01", "--out", str(tmp_path)])
    assert code == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    timed = rows[rows["sizes"] != "study"]
    assert set(timed["family"]) == {"embedding", "layernorm"}
    assert (timed["status"] == "PASS").all() and (timed["ratio"] > 0).all()
    assert (timed["run_manual_s"] > 0).all() and (timed["run_reference_s"] > 0).all()
    doc = json.loads((tmp_path / "results.json").read_text())
    studies = {s["family"]: s for s in doc["studies"]}
    assert studies["embedding"]["status"] == "PASS"
    assert studies["embedding"]["table"] == [dict(P=10, full=0.5)]
    assert studies["layernorm"]["status"] == "ERROR"  # the planted failure
    assert "planted" in studies["layernorm"]["message"]
    assert doc["verdict"]["passed"] is False
    text = (tmp_path / "report.md").read_text()
    assert "backprop-suite bench" in text and "floor line 12.5 ms" in text
    assert small[0].name in text and "**Verdict: FAIL**" in text
