"""Benchmarks: compiled manual code against compiled autodiff, in one process.

The common table times the registry's ``tier="bench"`` cases: for each (case, dtype) both
sides are jit-compiled, checked against each other once (a fast wrong answer is not a
result), then timed in interleaved rounds (``suite.timing.time_interleaved``) and
summarised by their medians. On a CPU the absolute numbers drift with everything else
running; the ratio manual/autodiff is what to quote.

Measurements that do not fit the common table (the stagewise Hessian's machine floor,
memory and largest P) are extras: one module of this package each, listed in ``EXTRAS``
by the family they belong to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import pandas as pd

from suite import compare as cmp
from suite.bench import bptt, stagewise
from suite.cases import Case
from suite.cases import cases as registered_cases
from suite.run import build_inputs, resolve_device
from suite.timing import block, compile_timed, time_interleaved

__all__ = ["EXTRAS", "bench_case", "run_bench"]

# family -> extra(device=..., echo=...) printed after the common table
EXTRAS: dict[str, Callable[..., None]] = {"stagewise": stagewise.extra,
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


def run_bench(*, family: Iterable[str] | None = None, dtypes: Iterable[str] | None = None,
              device: jax.Device | str | None = None, budget_s: float = 3.0,
              extras: bool = True, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Time every bench case; print a line per case as it completes; return a DataFrame."""
    device = resolve_device(device) if isinstance(device, (str, type(None))) else device
    family = None if family is None else tuple(family)
    rows = []
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
                rows.append(row)
        for name, extra in EXTRAS.items() if extras else ():
            if family is not None and name not in family:
                continue
            echo(f"\n== {name}: extra measurements ==")
            try:
                extra(device=device, echo=echo)
            except Exception as err:
                echo(f"ERROR in the {name} extras: {type(err).__name__}: {err}")
    return pd.DataFrame(rows)
