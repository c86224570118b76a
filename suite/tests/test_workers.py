"""Parallel judging and the persistent compilation cache (suite.run.run_all(workers=N),
suite.config.use_compile_cache).

Two phases must give the rows of a serial run — same order, same errors, same witnesses
and truths, bit for bit — with only the times differing; a case the workers cannot look
up by name (a planted one) is judged in the parent and keeps its place. The cache must
store the suite's small programs (JAX's default threshold of one second of compile time
would store none of them) and load them on the next compile.
"""

import subprocess
import sys
import textwrap

import pytest

from suite import cases as registry
from suite import cli
from suite.config import use_compile_cache
from suite.results import Status
from suite.run import run_all
from suite.tests.planting import nudge_one_element, plant

TIMES = ("compile_manual_s", "compile_reference_s", "run_manual_s", "run_reference_s", "ratio")
# A small registry case (a finite-difference witness in float64, truths in float32) in two
# dtypes for the two workers, and after it a planted one that fails in float64: judged in
# the parent, it must keep its place.
NAME = "linear/nonsquare"


def untimed(rows):
    """Every column of every row but the times: what serial and parallel must share."""
    return [{k: v for k, v in row.as_dict().items() if k not in TIMES} for row in rows]


def _cases():
    good = registry.get(NAME)
    return [good, plant(good, manual=nudge_one_element)]


@pytest.fixture(scope="module")
def serial_and_parallel():
    cases = _cases()
    kwargs = dict(timing=True, truth=True, budget_s=0.01)
    serial = run_all(cases, ("float32", "float64"), **kwargs)
    timed = []
    parallel = run_all(cases, ("float32", "float64"), workers=2, on_timed=timed.append,
                       **kwargs)
    return serial, parallel, timed


def test_two_workers_give_the_serial_rows_times_aside(serial_and_parallel):
    serial, parallel, timed = serial_and_parallel
    assert untimed(parallel.rows) == untimed(serial.rows)
    statuses = [r.status for r in serial.rows]
    # the planted float64 row fails; its float32 nudge is within float32's tolerance
    assert statuses == [Status.PASS, Status.PASS, Status.PASS, Status.FAIL]
    assert all(r.ratio is not None and r.compile_manual_s is not None for r in parallel.rows)
    assert [id(r) for r in timed] == [id(r) for r in parallel.rows]  # every row timed here
    assert parallel.environment["workers"].startswith("2:")


def test_the_comparison_sees_a_row_that_differs(serial_and_parallel):
    serial, _, _ = serial_and_parallel
    good, planted = serial.rows[0], serial.rows[2]  # nonsquare float32, +planted float32
    assert good.dtype == planted.dtype and good.case + "+planted" == planted.case
    renamed = untimed([planted])[0] | {"case": good.case}
    assert renamed != untimed([good])[0]  # the nudged element changes the errors


def test_bad_worker_counts_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="workers must be a whole number >= 1, got 0"):
        run_all([], ("float64",), workers=0)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--workers", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--no-compile-cache", "--compile-cache", str(tmp_path)])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_a_cache_folder_that_cannot_be_made_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="compile cache directory .*a-file/jax.* cannot be made"):
        use_compile_cache(str(blocker / "jax"))
    with pytest.raises(ValueError, match="directory must be a non-empty path, got ''"):
        use_compile_cache("")


def test_the_cache_stores_small_compiles_and_loads_them(tmp_path):
    # In a fresh process: the cache is a process-wide setting, never the test session's.
    script = textwrap.dedent(f"""
        import jax, os
        from suite import cases
        from suite.config import configure, use_compile_cache, compile_cache_counts
        from suite.run import run_case
        configure()
        use_compile_cache({str(tmp_path / "cache")!r})
        case = cases.get("linear/nonsquare")
        first = run_case(case, "float64", budget_s=0.01)
        after_first = compile_cache_counts()
        jax.clear_caches()
        second = run_case(case, "float64", budget_s=0.01)
        total = compile_cache_counts()
        print(first.status, second.status, *after_first, *total,
              len(os.listdir({str(tmp_path / "cache")!r})))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    first, second, hits1, requests1, hits, requests, entries = out.stdout.split()
    hits1, requests1, hits, requests, entries = map(int, (hits1, requests1, hits, requests,
                                                          entries))
    assert (first, second) == ("PASS", "PASS")
    assert requests1 >= 3 and entries >= requests1 - hits1  # every compile stored, none < 1 s
    assert hits - hits1 == requests - requests1 > 0  # the second run: every compile a load
