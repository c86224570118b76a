"""Study: the two hand-derived convolution backwards side by side.

``manual.conv`` computes dX and dW as ``lax.conv_general_dilated`` with the arguments of
the derivation (dY dilated by the stride and correlated with the flipped, transposed
kernel; the input correlated with dY); ``manual.im2col`` unfolds the patches into a
matrix and does two matrix products and a col2im scatter-add. On the same inputs, both
are judged against the same oracle (jax.vjp of conv2d) and timed against it, compiled.

Checks (the study's verdict):
    agree   both implementations are within the dtype's tolerance of the oracle on every
            configuration, and within it of each other

``quick`` runs three small configurations in float64 with a short timing budget.
"""

import functools

import jax
import numpy as np

from manual import conv, im2col
from reference import autodiff
from suite import compare, plots
from suite.cases.conv import NAMED_CONFIGS, padded_conv2d
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study
from suite.timing import compile_timed, time_interleaved

__all__ = ["CONFIGS", "QUICK_CONFIGS", "run", "render", "STUDY"]

CONFIGS = ("basic", "stride2-remainder", "dilation", "groups", "1x1-pad", "mixed-pairs",
           "large", "large-s2-g4")
QUICK_CONFIGS = ("basic", "groups", "mixed-pairs")
IMPLEMENTATIONS = {"lax": conv.conv2d_backward, "im2col": im2col.conv2d_im2col_backward}


def _measure(label, dtype, budget_s):
    config = NAMED_CONFIGS[label]
    inputs = config.build(jax.random.PRNGKey(0), dtype)
    args = (inputs["x"], inputs["w"], inputs["b"], inputs["dy"])
    forward = functools.partial(padded_conv2d, **config.kwargs)

    def oracle(x, w, b, dy):
        return tuple(autodiff.vjp(forward, (x, w, b), dy))

    fns = {"autodiff": oracle}
    fns.update({name: functools.partial(fn, **config.kwargs)
                for name, fn in IMPLEMENTATIONS.items()})
    compiled = {name: compile_timed(fn, *args)[0] for name, fn in fns.items()}
    outs = {name: fn(*args) for name, fn in compiled.items()}
    medians, _ = time_interleaved(list(compiled.values()), *args, budget_s=budget_s)
    seconds = dict(zip(compiled, medians, strict=True))
    row = dict(config=label, dtype=dtype, **config.sizes)
    for name in IMPLEMENTATIONS:
        judged = compare.compare(outs[name], outs["autodiff"], dtype)
        row[f"{name}_normwise"] = judged.worst.normwise
        row[f"{name}_passed"] = judged.passed
        row[f"{name}_ratio"] = seconds[name] / seconds["autodiff"]
    between = compare.compare(outs["im2col"], outs["lax"], dtype)
    row["between_normwise"], row["between_passed"] = between.worst.normwise, between.passed
    return row


def run(*, quick: bool = False, device=None) -> Outcome:
    """Both backwards against the oracle and each other, with run-time ratios."""
    del device
    labels, dtypes = (QUICK_CONFIGS, ("float64",)) if quick else (CONFIGS, ("float32", "float64"))
    table = [_measure(label, dtype, 0.05 if quick else 0.3) for label in labels for dtype in dtypes]
    bad = [f"{r['config']} {r['dtype']}" for r in table
           if not (r["lax_passed"] and r["im2col_passed"] and r["between_passed"])]
    checks = [Check("agree", not bad, "every configuration within tolerance" if not bad else
                    "outside tolerance: " + ", ".join(bad))]
    figures = {}
    for name in IMPLEMENTATIONS:
        figures[f"{name}_worst_normwise"] = max(r[f"{name}_normwise"] for r in table)
        figures[f"{name}_median_ratio"] = float(np.median([r[f"{name}_ratio"] for r in table]))
    return Outcome(figures=figures, checks=checks, table=table)


def _plot(table, path):
    fig, axes = plots.figure(
        1, 2, width=11, height=0.32 * len(table) + 1.8,
        title="conv2d backward: lax (manual.conv) and im2col (manual.im2col) vs jax.vjp")
    labels = [f"{r['config']} {r['dtype']}" for r in table]
    y = np.arange(len(table))
    for k, name in enumerate(IMPLEMENTATIONS):
        axes[0].scatter(np.maximum([r[f"{name}_normwise"] for r in table], 1e-18),
                        y + 0.15 * (k - 0.5), s=14, label=name)
        axes[1].barh(y + 0.4 * (k - 0.5), [r[f"{name}_ratio"] for r in table], height=0.4,
                     label=name)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("normwise error vs jax.vjp (0 plotted at 1e-18)")
    axes[1].axvline(1.0, color="k", lw=0.8)
    axes[1].set_xlabel("run time / jax.vjp's (compiled, median)")
    for ax in axes:
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    axes[1].set_yticklabels([])
    return plots.save(fig, path)


def render(result: StudyResult, out_dir: str) -> str:
    """The report's text: per-configuration errors and ratios of both, and the plot."""
    lines = ["`lax`: manual.conv, dX and dW as `lax.conv_general_dilated` with the arguments of "
             "the derivation. `im2col`: manual.im2col, patches as a matrix, two matrix products "
             "and a col2im scatter-add. Both against jax.vjp of conv2d on the same inputs; "
             "*between* is im2col against lax.", "",
             "| config | sizes | dtype | lax normwise | im2col normwise | between | "
             "lax / autodiff | im2col / autodiff |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in result.outcome.table:
        sizes = f"N={r['N']} C={r['C']} HW={r['HW']} k={r['k']} s={r['s']} p={r['p']} " \
                f"d={r['d']} g={r['g']}"
        lines.append(f"| {r['config']} | {sizes} | {r['dtype']} | {r['lax_normwise']:.2e} | "
                     f"{r['im2col_normwise']:.2e} | {r['between_normwise']:.2e} | "
                     f"{r['lax_ratio']:.2f} | {r['im2col_ratio']:.2f} |")
    plot = _plot(result.outcome.table, f"{out_dir}/conv_implementations.png")
    lines += ["", f"![implementations]({plot})"]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="conv_implementations", family="conv",
    title="The two convolution backwards: lax and im2col",
    run=run, render=render))
