"""What a network's exact curvature costs, in units of one hand-derived gradient.

The issue's three shapes (suite.cases.network.BENCH_NETS: a CNN with max and average
pooling, a ResNet basic block, a pre-LN causal transformer block; float64, softmax
cross-entropy, 10 classes). Each program is compiled, then timed in interleaved rounds
(medians; suite.timing):

    grad          manual.network.grad                one gradient, the unit
    diagonal      manual.network.hessian_diagonal    exact, no (P, P) formed
    hvp           manual.network.hvp                 against jax.jvp of jax.grad
    per_sample    manual.network.per_sample_grads    against jax.vmap of jax.grad
    jax.hessian   the diagonal of jax.hessian        (P <= MAX_JAX_HESSIAN_P only)

of reference/network.py's forward for the autodiff side. Checks (accuracy; speed is
measured, not asserted): the diagonal, the hvp and the per-sample gradients agree with
their autodiff counterparts to 1e-12 normwise on every shape.

``quick`` (report --quick) measures the small nets of the registry instead.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from manual import network
from reference import network as oracle
from suite import plots
from suite.cases.network import BENCH_NETS, NETS, make_net, network_inputs, param_count
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study
from suite.timing import compile_timed, time_interleaved

__all__ = ["MAX_JAX_HESSIAN_P", "TOLERANCE", "shapes", "measure", "run", "render", "STUDY"]

# jax.hessian only for the CNN (P = 2,042: 2 s a call). The ResNet's (P = 5,258) takes a
# minute a call on two cores, and its diagonal's speed-up is already the registry row
# network/diagonal/resnet-full-ce-N32 and `make bench`: timing it here again cost the
# report six minutes.
MAX_JAX_HESSIAN_P = 3000
TOLERANCE = 1e-12
LOSS = "softmax_cross_entropy"
PROGRAMS = ("grad", "diagonal", "hvp", "jvp_grad", "per_sample", "vmap_grad", "jax.hessian")


def shapes(quick: bool) -> dict:
    """label -> (spec, x shape, loss)."""
    if quick:
        return {k: NETS[k] for k in ("cnn", "resnet", "transformer-causal")}
    return {k: (spec, shape, LOSS) for k, (spec, shape) in BENCH_NETS.items()}


def _normwise(a, b):
    a, b = (np.asarray(ravel_pytree(t)[0], np.float64) for t in (a, b))
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def measure(label: str, spec: tuple, x_shape: tuple, loss, *, device=None) -> dict:
    """One row: P, the median seconds of each program, and the three accuracies."""
    net = make_net(spec)
    i = network_inputs(jax.random.PRNGKey(0), spec, x_shape, "float64", loss=loss,
                       margin=None, with_v=True)
    data = jax.device_put((i["params"], i["x"], i["y"], i["v"]), device)
    count = param_count(spec, x_shape)
    fns = {
        "grad": lambda p, x, y, v: network.grad(net, p, x, y, loss=loss),
        "diagonal": lambda p, x, y, v: network.hessian_diagonal(net, p, x, y, loss=loss),
        "hvp": lambda p, x, y, v: network.hvp(net, p, x, y, v, loss=loss),
        "jvp_grad": lambda p, x, y, v: oracle.hvp(net, p, x, y, v, loss=loss),
        "per_sample": lambda p, x, y, v: network.per_sample_grads(net, p, x, y, loss=loss),
        "vmap_grad": lambda p, x, y, v: oracle.per_sample_grads(net, p, x, y, loss=loss),
    }
    if count <= MAX_JAX_HESSIAN_P:
        fns["jax.hessian"] = lambda p, x, y, v: oracle.hessian_diagonal(net, p, x, y, loss=loss)
    compiled = {k: compile_timed(f, *data)[0] for k, f in fns.items()}
    names = list(compiled)
    medians, _ = time_interleaved([compiled[k] for k in names], *data, budget_s=2.0,
                                  min_repeats=3, max_repeats=50)
    row = dict(net=label, P=count, x="x".join(map(str, x_shape)))
    row.update({k: None for k in PROGRAMS})
    row.update(dict(zip(names, medians, strict=True)))
    out = {k: compiled[k](*data) for k in names if k != "grad"}
    row["hvp_error"] = _normwise(out["hvp"], out["jvp_grad"])
    row["per_sample_error"] = _normwise(out["per_sample"], out["vmap_grad"])
    row["diagonal_error"] = (_normwise(out["diagonal"], out["jax.hessian"])
                             if "jax.hessian" in out else None)
    return row


def run(*, quick: bool = False, device=None) -> Outcome:
    rows = [measure(label, *shape, device=device) for label, shape in shapes(quick).items()]
    checks = []
    for r in rows:
        errors = {k: r[f"{k}_error"] for k in ("diagonal", "hvp", "per_sample")
                  if r[f"{k}_error"] is not None}
        worst = max(errors, key=errors.get)
        checks.append(Check(r["net"], all(e <= TOLERANCE for e in errors.values()),
                            f"P = {r['P']}: worst normwise error {errors[worst]:.1e} "
                            f"({worst}) against autodiff (bound {TOLERANCE:g})"))
    figures = {f"{r['net']}_{k}_over_grad": r[k] / r["grad"] for r in rows
               for k in ("diagonal", "hvp", "per_sample")}
    figures.update({f"{r['net']}_diagonal_speedup": r["jax.hessian"] / r["diagonal"]
                    for r in rows if r["jax.hessian"] is not None})
    return Outcome(figures=figures, checks=checks, table=rows)


LABELS = {"diagonal": "hessian_diagonal (exact)", "jax.hessian": "diagonal of jax.hessian",
          "hvp": "hvp", "jvp_grad": "jax.jvp(jax.grad)", "per_sample": "per_sample_grads",
          "vmap_grad": "jax.vmap(jax.grad)"}


def _plot(rows, path):
    fig, ax = plots.figure(1, 1, width=10, height=4.2,
                           title="manual.network: cost in hand-derived gradients (float64, "
                                 "CPU, medians; log scale)")
    names = list(LABELS)
    y = np.arange(len(rows))
    height = 0.8 / len(names)
    for k, name in enumerate(names):
        values = [np.nan if r[name] is None else r[name] / r["grad"] for r in rows]
        ax.barh(y + (k - len(names) / 2 + 0.5) * height, values, height=height,
                color=f"C{k}", label=LABELS[name])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['net']} (P = {r['P']})" for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("time / one manual.network.grad (dimensionless)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    return plots.save(fig, path)


def render(result: StudyResult, out_dir: str) -> str:
    rows = result.outcome.table
    plot = _plot(rows, f"{out_dir}/network_cost.png")

    def ms(t):
        return "—" if t is None else f"{1e3 * t:.3g} ms"

    def ratio(a, b):
        return "—" if a is None or b is None else f"{a / b:.2f}"

    lines = [
        "Every program compiled, then timed in interleaved rounds (medians; the CPU is "
        "shared, so ratios are what to quote). Softmax cross-entropy, float64; the autodiff "
        "side differentiates reference/network.py's forward.", "",
        "| net | x | P | grad | diagonal | diagonal / grad | jax.hessian | speed-up | hvp | "
        "hvp / jvp(grad) | per-sample | per-sample / vmap(grad) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['x']} | {r['P']} | {ms(r['grad'])} | {ms(r['diagonal'])} | "
            f"{ratio(r['diagonal'], r['grad'])} | {ms(r['jax.hessian'])} | "
            f"{ratio(r['jax.hessian'], r['diagonal'])} | {ms(r['hvp'])} | "
            f"{ratio(r['hvp'], r['jvp_grad'])} | {ms(r['per_sample'])} | "
            f"{ratio(r['per_sample'], r['vmap_grad'])} |")
    lines += ["", f"![network cost]({plot})", "",
              f"jax.hessian is timed only where P <= {MAX_JAX_HESSIAN_P}; the ResNet's "
              "diagonal against it is the registry row network/diagonal/resnet-full-ce-N32, "
              "and every shape's is in `make bench`."]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="network_cost", family="network",
    title="What a network's exact curvature costs: the diagonal, hvp and per-sample "
          "gradients against one gradient and autodiff",
    run=run, render=render))
