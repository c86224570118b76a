"""Benchmarks: compiled manual code against compiled autodiff, in one process.

The cases are the registry's ``tier="bench"`` entries. For each (case, dtype) both
sides are jit-compiled, checked against each other once (a fast wrong answer is not a
result), then timed in interleaved rounds (suite.run.time_interleaved) and summarised
by their medians. On a CPU the absolute numbers drift with everything else running;
the ratio manual/autodiff is what to quote.
"""

import jax
import pandas as pd

from suite import cases as registry
from suite import compare as cmp
from suite.run import block, build_inputs, compile_timed, resolve_device, time_interleaved


def bench_case(case, dtype, *, device, budget_s):
    inputs = jax.device_put(build_inputs(case, dtype), device)
    manual, t_manual = compile_timed(case.manual, inputs)
    autodiff, t_autodiff = compile_timed(case.reference, inputs)
    check = cmp.compare(block(manual(inputs)), block(autodiff(inputs)), dtype)
    (m, a), samples = time_interleaved([manual, autodiff], inputs, budget_s=budget_s,
                                       min_repeats=7)
    return dict(case=case.name, family=case.family, dtype=dtype, sizes=case.size_label,
                check="PASS" if check.passed else "FAIL", normwise=check.worst.normwise,
                rounds=len(samples[0]), compile_manual_s=t_manual,
                compile_autodiff_s=t_autodiff, manual_ms=1e3 * m, autodiff_ms=1e3 * a,
                ratio=m / a)


def run_bench(*, family=None, dtypes=None, device=None, budget_s=3.0, extras=True, echo=print):
    """Time every bench case; print a line per case as it completes; return a DataFrame."""
    device = resolve_device(device) if isinstance(device, (str, type(None))) else device
    rows = []
    echo(f"{'case':<34} {'dtype':<8} {'check':<5} {'manual ms':>10} {'autodiff ms':>12} "
         f"{'ratio':>6}  rounds")
    for case in registry.cases(family=family, tiers=("bench",)):
        for dtype in dtypes or case.dtypes:
            if dtype not in case.dtypes:
                continue
            try:
                row = bench_case(case, dtype, device=device, budget_s=budget_s)
                echo(f"{row['case']:<34} {dtype:<8} {row['check']:<5} {row['manual_ms']:>10.3f} "
                     f"{row['autodiff_ms']:>12.3f} {row['ratio']:>6.3f}  {row['rounds']}")
            except Exception as err:  # one broken benchmark must not hide the others
                row = dict(case=case.name, family=case.family, dtype=dtype, check="ERROR",
                           error=f"{type(err).__name__}: {err}".splitlines()[0])
                echo(f"{case.name:<34} {dtype:<8} ERROR {row['error']}")
            rows.append(row)
    if extras:
        for fam in registry.families():
            if fam.extra_bench is not None and (family is None or fam.name in family):
                echo(f"\n== {fam.name}: {fam.title} ==")
                try:
                    fam.extra_bench(device=device, echo=echo)
                except Exception as err:
                    echo(f"ERROR in {fam.name} extra bench: {type(err).__name__}: {err}")
    return pd.DataFrame(rows)
