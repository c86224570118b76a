"""Study: what checkpointed BPTT costs and saves, in memory and in time (issue 14).

The vanilla RNN and the LSTM at T = 1000, N = 32, D = H = 256, float32, each backward
pass compiled (jit), six ways:

    full            manual BPTT, every step's residuals kept (checkpoint=None)
    k=10, k=√T, k=100
                    manual BPTT with ``checkpoint=k``: only the state entering every
                    k-th step kept, each segment recomputed in the reverse sweep
                    (k = ⌈√1000⌉ = 32 for √T)
    jax.vjp         autodiff of the same forward (manual.rnn.forward, manual.lstm.forward)
    jax.vjp + jax.checkpoint
                    autodiff of the same forward with ``jax.checkpoint`` on the scanned
                    step: the scan keeps each step's carry, not its internals

Memory is XLA's compiled temporary memory (``memory_analysis().temp_size_in_bytes``,
compile only: the buffers the program needs besides its inputs and outputs). Time is the
median of interleaved rounds (suite.timing), on whatever else the machine is running.

The derivation (manual/_bptt.py): checkpointing keeps ⌈T/k⌉ - 1 states and one
segment's k steps of residuals, O(T/k + k) states instead of T steps of residuals, for
one extra forward pass.

Checks (the study's verdict):
    <cell> √T memory   checkpoint="sqrt" needs at most 15% of full BPTT's temporary
                       memory (the issue's bound)
    <cell> agree       every strategy's gradient is within the float32 tolerance of
                       jax.vjp's (a checkpointed gradient is full BPTT's to rounding)
Time is reported (figures, table, plot), not asserted: the issue's bound, √T within
1.5x of full BPTT's time, is read off the table.

``quick`` runs T = 400, N = 4, D = H = 16 with a short timing budget.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from manual import lstm, rnn
from reference import autodiff
from suite import compare, plots
from suite.cases import lstm as lstm_cases
from suite.cases import rnn as rnn_cases
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study
from suite.timing import compile_timed, time_interleaved

__all__ = ["SIZES", "QUICK_SIZES", "MEMORY_BOUND", "TIME_BOUND", "DTYPE", "remat_forward",
           "strategies", "measure", "run", "render", "STUDY"]

SIZES = dict(t=1000, n=32, d=256, h=256)
QUICK_SIZES = dict(t=400, n=4, d=16, h=16)
MEMORY_BOUND = 0.15  # √T checkpointing's temp memory / full BPTT's (issue 14)
TIME_BOUND = 1.5     # √T checkpointing's time / full BPTT's (issue 14; reported only)
DTYPE = "float32"
CHECKPOINTS = (10, "sqrt", 100)
CELLS = {"rnn": (rnn, rnn_cases, ("params", "xs", "h0"), rnn.forward),
         "lstm": (lstm, lstm_cases, ("params", "xs", "h0", "c0"), lstm_cases.hidden_states)}


def _sigmoid(z):
    return 0.5 * jnp.tanh(0.5 * z) + 0.5


def remat_forward(cell):
    """The hidden states of ``cell``'s forward (same hoisted input projection as manual/),
    with ``jax.checkpoint`` on the scanned step: autodiff then keeps only each carry."""
    if cell == "rnn":
        def forward(params, xs, h0):
            xw = xs @ params["w_xh"] + params["b"][None, None, :]

            @jax.checkpoint
            def step(h, xw_t):
                h = jnp.tanh(xw_t + h @ params["w_hh"])
                return h, h
            return lax.scan(step, h0, xw)[1]
        return forward

    def forward(params, xs, h0, c0):
        xw = xs @ params["w_x"]

        @jax.checkpoint
        def step(state, xw_t):
            h, c = state
            z = xw_t + h @ params["w_h"] + params["b"][None, :]
            i, f, g, o = jnp.split(z, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * jnp.tanh(g)
            h = _sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        return lax.scan(step, (h0, c0), xw)[1]
    return forward


def strategies(cell):
    """{label: fn(inputs) -> the cotangents of the primals} for one cell, in table order."""
    module, _, primals, forward = CELLS[cell]

    def args(i):
        return tuple(i[k] for k in primals)

    def manual(checkpoint):
        return lambda i: tuple(module.backward(*args(i), i["dhs"], checkpoint=checkpoint))

    fns = {"full": manual(None)}
    fns.update({("k=√T" if k == "sqrt" else f"k={k}"): manual(k) for k in CHECKPOINTS})
    fns["jax.vjp"] = lambda i: tuple(autodiff.vjp(forward, args(i), i["dhs"]))
    fns["jax.vjp + jax.checkpoint"] = lambda i: tuple(
        autodiff.vjp(remat_forward(cell), args(i), i["dhs"]))
    return fns


def measure(cell, sizes, *, budget_s):
    """Temp memory, median time and error against jax.vjp of every strategy: table rows."""
    _, cases, _, _ = CELLS[cell]
    inputs = cases.builder(sizes["t"], sizes["n"], sizes["d"], sizes["h"])(
        jax.random.PRNGKey(0), DTYPE)
    compiled, rows = {}, []
    for label, fn in strategies(cell).items():
        compiled[label], compile_s = compile_timed(fn, inputs)
        analysis = compiled[label].memory_analysis()
        temp = None if analysis is None else analysis.temp_size_in_bytes / 2**20
        rows.append(dict(cell=cell, strategy=label, compile_s=compile_s, temp_mib=temp))
    oracle = compiled["jax.vjp"](inputs)
    medians, samples = time_interleaved(list(compiled.values()), inputs, budget_s=budget_s,
                                        min_repeats=5)
    for row, fn, median in zip(rows, compiled.values(), medians, strict=True):
        judged = compare.compare(fn(inputs), oracle, DTYPE)
        row.update(time_ms=1e3 * median, rounds=len(samples[0]),
                   normwise=judged.worst.normwise, agrees=judged.passed)
    full = rows[0]
    segment = {"k=10": 10, "k=√T": math.isqrt(sizes["t"] - 1) + 1, "k=100": 100}
    for row in rows:
        row["k"] = segment.get(row["strategy"])
        row["memory_ratio"] = (None if row["temp_mib"] is None or not full["temp_mib"]
                               else row["temp_mib"] / full["temp_mib"])
        row["time_ratio"] = row["time_ms"] / full["time_ms"]
    return rows


def run(*, quick: bool = False, device=None) -> Outcome:
    """Both cells, six strategies each; checks on √T's memory and on agreement."""
    del device
    sizes = QUICK_SIZES if quick else SIZES
    budget_s = 1.0 if quick else 20.0
    table = [row for cell in CELLS for row in measure(cell, sizes, budget_s=budget_s)]
    checks, figures = [], dict(T=sizes["t"], N=sizes["n"], D=sizes["d"], H=sizes["h"])
    for cell in CELLS:
        rows = {r["strategy"]: r for r in table if r["cell"] == cell}
        sqrt = rows["k=√T"]
        if sqrt["memory_ratio"] is None:
            checks.append(Check(f"{cell} √T memory", False, "no memory analysis on this backend"))
        else:
            checks.append(Check(
                f"{cell} √T memory", sqrt["memory_ratio"] <= MEMORY_BOUND,
                f"k={sqrt['k']}: {sqrt['temp_mib']:.2f} MiB, {sqrt['memory_ratio']:.1%} of full "
                f"BPTT's {rows['full']['temp_mib']:.2f} MiB (bound {MEMORY_BOUND:.0%})"))
        bad = [label for label, r in rows.items() if not r["agrees"]]
        checks.append(Check(f"{cell} agree", not bad,
                            "every strategy within the float32 tolerance of jax.vjp" if not bad
                            else "outside the tolerance: " + ", ".join(bad)))
        for label, r in rows.items():
            key = label.replace(" + ", "+").replace("√", "sqrt")
            figures[f"{cell}_{key}_temp_mib"] = r["temp_mib"]
            figures[f"{cell}_{key}_time_ms"] = r["time_ms"]
        figures[f"{cell}_sqrt_memory_ratio"] = sqrt["memory_ratio"]
        figures[f"{cell}_sqrt_time_ratio"] = sqrt["time_ratio"]
    return Outcome(figures=figures, checks=checks, table=table)


def _plot(table, sizes, path):
    labels = list(dict.fromkeys(r["strategy"] for r in table))
    fig, axes = plots.figure(
        1, 2, width=11, height=3.8,
        title=f"Backward pass at T={sizes['T']}, N={sizes['N']}, D={sizes['D']}, "
              f"H={sizes['H']}, {DTYPE}: memory and time per strategy")
    y = range(len(labels))
    for j, cell in enumerate(CELLS):
        rows = {r["strategy"]: r for r in table if r["cell"] == cell}
        offset = [v + 0.4 * (j - 0.5) for v in y]
        axes[0].barh(offset, [rows[s]["temp_mib"] or 0.0 for s in labels], height=0.4,
                     label=cell)
        axes[1].barh(offset, [rows[s]["time_ratio"] for s in labels], height=0.4, label=cell)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("compiled temporary memory (MiB, log scale)")
    axes[1].axvline(1.0, color="k", lw=0.8)
    axes[1].axvline(TIME_BOUND, color="k", lw=0.8, ls="--", label=f"{TIME_BOUND}x (issue 14)")
    axes[1].set_xlabel("run time / full manual BPTT's (medians of interleaved rounds)")
    for ax in axes:
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    axes[1].set_yticklabels([])
    return plots.save(fig, path)


def render(result: StudyResult, out_dir: str) -> str:
    """The report's text: memory and time per strategy for both cells, and the plot."""
    f = result.figures
    lines = [f"T={f['T']}, N={f['N']}, D={f['D']}, H={f['H']}, {DTYPE}. Memory: XLA's compiled "
             "temporary memory (compile only). Time: median of interleaved rounds of the "
             "compiled backward passes, on a shared machine; ratios are to full manual BPTT of "
             f"the same cell. Issue 14's bounds for √T: memory <= {MEMORY_BOUND:.0%}, time <= "
             f"{TIME_BOUND}x.", "",
             "| cell | strategy | temp memory (MiB) | / full | time (ms) | / full | "
             "normwise vs jax.vjp |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in result.outcome.table:
        memory = "—" if r["temp_mib"] is None else f"{r['temp_mib']:.2f}"
        ratio = "—" if r["memory_ratio"] is None else f"{r['memory_ratio']:.3f}"
        lines.append(f"| {r['cell']} | {r['strategy']} | {memory} | {ratio} | "
                     f"{r['time_ms']:.1f} | {r['time_ratio']:.2f} | {r['normwise']:.1e} |")
    plot = _plot(result.outcome.table, f, f"{out_dir}/bptt_memory.png")
    lines += ["", f"![memory and time]({plot})"]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="bptt_memory", family="rnn",
    title="Checkpointed BPTT: memory and time of each strategy (T=1000)",
    run=run, render=render))
