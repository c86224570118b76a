"""suite.sharded on four devices: each function against manual/ on one device and autodiff.

The measurements are made once, in a subprocess with four forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``), by suite/tests/sharded_worker.py;
this process — one CPU device, untouched — only reads its JSON. Under pytest-xdist the
first worker to get here runs it and the others read the same file (a lock on it).

Meshes: (data=4), (data=2, model=2), (data=1, model=4) with Explicit axes (jax.make_mesh's
default) and (data=2, model=2) with Auto axes. Float64, normwise <= 1e-12
(suite.compare's tolerance) against both oracles. Planted bugs — a missing psum, a shard
gradient not rescaled, λW added on every shard, the wrong rows, a missing sum of dW or
dparams — must each FAIL the same comparison.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys

import jax
import pytest

from suite import cases as registry
from suite import cli
from suite.tests import sharded_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_worker(path: str, *extra: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + f" --xla_force_host_platform_device_count={worker.DEVICES}").strip())
    proc = subprocess.run([sys.executable, "-m", "suite.tests.sharded_worker", path, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"the sharded worker failed:\n{proc.stderr[-4000:]}"
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def measured(tmp_path_factory, request) -> dict:
    """The worker's JSON: run once per test session, shared by the xdist workers."""
    if not hasattr(request.config, "workerinput"):  # no xdist: this process alone
        return _run_worker(str(tmp_path_factory.mktemp("sharded") / "sharded.json"))
    shared = tmp_path_factory.getbasetemp().parent / "sharded.json"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shared.exists():
            return json.loads(shared.read_text())
        return _run_worker(str(shared))


COMPARISONS = [f"{label}/{fn}" for label, _, axis_type in worker.MESHES
               for fn in worker.functions(label, axis_type)]


def test_the_worker_saw_four_devices(measured):
    assert measured["platform"] == "cpu" and len(measured["devices"]) == worker.DEVICES


@pytest.mark.parametrize("name", COMPARISONS)
def test_sharded_equals_single_device_manual_and_autodiff(measured, name):
    entry = measured["comparisons"][name]
    assert entry["single_passed"], entry["single_message"]
    assert entry["autodiff_passed"], entry["autodiff_message"]
    assert entry["single_normwise"] <= 1e-12 and entry["autodiff_normwise"] <= 1e-12


@pytest.mark.parametrize("label", [label for label, shape, _ in worker.MESHES])
def test_hessian_is_sharded_by_rows_over_model(measured, label):
    entry = measured["comparisons"][f"{label}/hessian"]
    layout, total, parts = entry["layout"], entry["P"], entry["n_model"]
    assert layout["shape"] == [total, total]
    assert len(layout["shards"]) == worker.DEVICES
    for shard in layout["shards"]:  # each device holds P / n_model rows, every column
        assert shard["shape"] == [total // parts, total], shard
        assert shard["rows"][1] - shard["rows"][0] == total // parts
    starts = sorted({s["rows"][0] for s in layout["shards"]})
    assert starts == [j * total // parts for j in range(parts)]  # together: every row
    if parts > 1:
        assert layout["spec"][0] == "model" and all(a is None for a in layout["spec"][1:])


@pytest.mark.parametrize("label", [label for label, _, axis_type in worker.MESHES
                                   if axis_type != worker.AxisType.Auto])
def test_conv_input_gradient_stays_split_over_data(measured, label):
    layout = measured["comparisons"][f"{label}/conv2d_backward"]["layout"]
    data = {name: shape for name, shape, _ in worker.MESHES}[label]["data"]
    assert layout["spec"][0] == "data"
    assert all(s["shape"][0] == layout["shape"][0] // data for s in layout["shards"])


@pytest.mark.parametrize("label", worker.NETWORK_MESHES)
def test_network_per_sample_grads_stay_split_over_data(measured, label):
    layout = measured["comparisons"][f"{label}/network_per_sample_grads"]["layout"]
    data = {name: shape for name, shape, _ in worker.MESHES}[label]["data"]
    assert layout["spec"][0] == "data"
    assert all(s["shape"][0] == layout["shape"][0] // data for s in layout["shards"])


@pytest.mark.parametrize("name", worker.PLANTED)
def test_planted_sharding_bug_fails_the_comparison(measured, name):
    assert measured["planted"][name]["passed"] is False, measured["planted"][name]


@pytest.mark.parametrize("name,argument", worker.BAD_INPUTS.items())
def test_bad_input_is_a_value_error_naming_the_argument(measured, name, argument):
    entry = measured["bad_inputs"][name]
    assert entry["raised"] == "ValueError", f"{name}: nothing raised"
    assert re.match(rf"{argument}\b", entry["message"]), entry["message"]


@pytest.mark.parametrize("name", worker.REGISTRY_CASES)
def test_registry_case_passes_through_run_case(measured, name):
    row = measured["registry"][name]
    assert row["status"] == "PASS", row["message"]
    assert row["normwise"] <= 1e-12 and row["fd_error"] is not None


# --- in this process (one CPU device): the registry and the CLI without the devices ---------

def test_sharded_cases_need_four_devices_and_cover_every_function_and_mesh():
    cases = registry.cases(family="sharded", tiers=None)
    assert cases and all(c.devices == worker.DEVICES for c in cases)
    functions = {c.name.split("/")[1] for c in cases}
    assert functions == set(worker.FUNCTIONS)
    meshes = {c.name.split("/")[2].split("-")[0] for c in cases}
    assert {"data4", "data2", "model4"} <= meshes


def test_report_without_the_devices_is_a_usage_error(tmp_path, capsys):
    assert jax.device_count() < worker.DEVICES  # the test session has one CPU device
    code = cli.main(["report", "--family", "sharded", "--out", str(tmp_path), "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and "--devices 4" in err, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_devices_beyond_the_machine_is_a_usage_error(tmp_path, capsys):
    # Once JAX's backend runs, no host device can be added: 64 is more than there are.
    assert jax.device_count() < 64  # (starts the backend, if no test of this process did)
    code = cli.main(["report", "--devices", "64", "--out", str(tmp_path), "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and "--devices 64" in err and "device(s)" in err, err


def test_devices_must_be_a_positive_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--devices", "0"])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err
