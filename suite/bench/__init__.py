"""Benchmarks: compiled manual code against compiled autodiff, in one process.

The common table times the registry's ``tier="bench"`` cases: for each (case, dtype) both
sides are jit-compiled, checked against each other once (a fast wrong answer is not a
result), then timed in interleaved rounds (``suite.timing.time_interleaved``) and
summarised by their medians. On a CPU the absolute numbers drift with everything else
running; the ratio manual/autodiff is what to quote.

Measurements that do not fit the common table (the stagewise Hessian's machine floor,
memory and largest P) are extras: one module of this package each, listed in ``EXTRAS``
by the family they belong to. An extra prints its lines through ``echo`` and may return
the rows of its table (a list of dicts).

``run_bench_results`` gives the same measurements as ``suite.results.Results`` for the one
report writer (``backprop-suite bench --out DIR``: report.md, results.csv, results.json):
each timed case is a ``Row`` (its check as the status, both medians, their ratio), each
extra a ``StudyResult`` of its family whose section is the lines it printed and whose
table is the rows it returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import jax
import pandas as pd

from suite import compare as cmp
from suite.bench import bptt, network, stagewise
from suite.cases import Case
from suite.cases import cases as registered_cases
from suite.results import Outcome, Results, Row, Status, StudyResult
from suite.run import build_inputs, environment, resolve_device
from suite.timing import block, compile_timed, time_interleaved

__all__ = ["EXTRAS", "bench_case", "bench_row", "run_bench", "run_bench_results"]

# family -> extra(device=..., echo=...) printed after the common table
EXTRAS: dict[str, Callable[..., object]] = {"stagewise": stagewise.extra,
                                            "network": network.extra,
                                            "rnn": bptt.rnn_extra, "lstm": bptt.lstm_extra}


def bench_case(case: Case, dtype: str, *, device: jax.Device, budget_s: float) -> dict:
    """Time one bench case in ``dtype``: a dict with both medians (ms) and their ratio."""
    inputs = jax.device_put(build_inputs(case, dtype), device)
    manual, t_manual = compile_timed(case.manual, inputs)
    reference, t_reference = compile_timed(case.reference, inputs)
    check = cmp.compare(block(manual(inputs)), block(reference(inputs)), dtype)
    (m, a), samples = time_interleaved([manual, reference], inputs, budget_s=budget_s,
                                       min_repeats=7)
    return dict(case=case.name, family=case.family, dtype=dtype, sizes=case.size_label,
                check="PASS" if check.passed else "FAIL", normwise=check.worst.normwise,
                rounds=len(samples[0]), compile_manual_s=t_manual,
                compile_reference_s=t_reference, manual_ms=1e3 * m, reference_ms=1e3 * a,
                ratio=m / a)


def bench_row(row: dict, device: jax.Device) -> Row:
    """A ``bench_case`` dict (or its ERROR dict) as a report ``Row``: the check is the status."""
    if row["check"] == "ERROR":
        return Row(case=row["case"], family=row["family"], dtype=row["dtype"],
                   device=str(device), status=Status.ERROR, message=row["error"])
    return Row(case=row["case"], family=row["family"], dtype=row["dtype"], device=str(device),
               sizes=row["sizes"], status=Status(row["check"]), normwise=row["normwise"],
               tol_normwise=cmp.tolerance(row["dtype"]).normwise,
               compile_manual_s=row["compile_manual_s"],
               compile_reference_s=row["compile_reference_s"],
               run_manual_s=1e-3 * row["manual_ms"], run_reference_s=1e-3 * row["reference_ms"],
               ratio=row["ratio"], message=f"medians of {row['rounds']} interleaved rounds")


def _extra_result(name: str, extra: Callable[..., object], device: jax.Device,
                  echo: Callable[[str], None]) -> StudyResult:
    """Run one extra, echoing and keeping its lines; ERROR (not a crash) if it raises."""
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        echo(line)

    result = StudyResult(name="extras", family=name, title=f"{name}: extra measurements",
                         status=Status.ERROR, render=lambda r, out_dir: "```\n" + "\n".join(
                             r.outcome.data) + "\n```")
    start = time.perf_counter()
    try:
        table = extra(device=device, echo=keep)
        result.status = Status.PASS
    except Exception as err:  # one broken extra must not hide the others
        table = None
        result.message = f"{type(err).__name__}: {err}".splitlines()[0]
        echo(f"ERROR in the {name} extras: {result.message}")
    result.seconds = time.perf_counter() - start
    result.outcome = Outcome(table=list(table) if isinstance(table, list) else [], data=lines)
    return result


def run_bench_results(*, family: Iterable[str] | None = None,
                      dtypes: Iterable[str] | None = None,
                      device: jax.Device | str | None = None, budget_s: float = 3.0,
                      extras: bool = True, echo: Callable[[str], None] = print) -> Results:
    """Time every bench case and run the extras; print as it goes; return ``Results``."""
    device = resolve_device(device) if isinstance(device, (str, type(None))) else device
    family = None if family is None else tuple(family)
    dtypes = None if dtypes is None else tuple(dtypes)
    rows, studies = [], []
    echo(f"{'case':<40} {'dtype':<8} {'check':<5} {'manual ms':>10} {'autodiff ms':>12} "
         f"{'ratio':>6}  rounds")
    with jax.default_device(device):
        for case in registered_cases(family=family, tiers=("bench",)):
            for dtype in dtypes or case.dtypes:
                if dtype not in case.dtypes:
                    continue
                try:
                    row = bench_case(case, dtype, device=device, budget_s=budget_s)
                    echo(f"{row['case']:<40} {dtype:<8} {row['check']:<5} "
                         f"{row['manual_ms']:>10.3f} {row['reference_ms']:>12.3f} "
                         f"{row['ratio']:>6.3f}  {row['rounds']}")
                except Exception as err:  # one broken benchmark must not hide the others
                    row = dict(case=case.name, family=case.family, dtype=dtype, check="ERROR",
                               error=f"{type(err).__name__}: {err}".splitlines()[0])
                    echo(f"{case.name:<40} {dtype:<8} ERROR {row['error']}")
                rows.append(bench_row(row, device))
        for name, extra in EXTRAS.items() if extras else ():
            if family is not None and name not in family:
                continue
            echo(f"\n== {name}: extra measurements ==")
            studies.append(_extra_result(name, extra, device, echo))
    env = environment(device)
    env["selection"] = (f"bench: families {','.join(family) if family else 'all'}; dtypes "
                        f"{','.join(dtypes) if dtypes else 'each case its own'}; budget "
                        f"{budget_s:g} s per case; extras {'on' if extras else 'off'}")
    return Results(rows=rows, studies=studies, environment=env)


def run_bench(*, family: Iterable[str] | None = None, dtypes: Iterable[str] | None = None,
              device: jax.Device | str | None = None, budget_s: float = 3.0,
              extras: bool = True, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Time every bench case; print a line per case as it completes; return a DataFrame
    (one row per timed case, in the columns of suite.results.Row)."""
    results = run_bench_results(family=family, dtypes=dtypes, device=device,
                                budget_s=budget_s, extras=extras, echo=echo)
    return pd.DataFrame([r.as_dict() for r in results.rows])
