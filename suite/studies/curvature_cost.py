"""What curvature costs: the whole Hessian, its diagonal, its blocks, its top eigenvalues
and its trace, by stagewise backprop, against P; and what one Hessian-vector product costs.

Tanh MLPs [h, h, h, 10] (float64, N = 64, mse), P from ~230 to ~10.6k. At each size,
compiled and timed in interleaved rounds (medians; suite.timing):

    full        manual.stagewise.hessian                  (P, P)
    jax.hessian jax.hessian of manual.mlp.loss             (P, P), the autodiff reference
    diagonal    manual.stagewise.hessian_diagonal          P numbers, no block formed
    blocks      manual.stagewise.hessian_blocks            the L layer-diagonal blocks
    lanczos     manual.spectrum.lanczos, top 10, on manual.stagewise.hessian_matvec
    floor       a fresh (P, P) buffer filled + 2 N P² flops at the measured matmul rate

and the cost of one Hessian-vector product: manual.stagewise.hvp against jax.jvp of
jax.grad, and against one gradient (manual.mlp.grad and jax.grad).

Checks (the study's verdict; accuracy only, speed is measured, not asserted):
    lanczos    the top 10 eigenvalues from Lanczos on the hand-derived hvp agree with a
               dense eigensolver (numpy.linalg.eigvalsh of jax.hessian) to 1e-8
               relative, at P = 3050 (quick: P = 1450), softmax cross-entropy
    hutchinson Hutchinson's estimate (200 Rademacher probes of the hvp) covers the exact
               trace, the sum of hessian_diagonal, within 3 standard errors
    trace      that exact trace agrees with the trace of jax.hessian to 1e-12 relative

``quick`` (report --quick) measures two sizes, P = 234 and 1450, and checks at 1450.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manual import mlp, spectrum, stagewise
from reference import autodiff
from suite import plots
from suite.cases.common import mlp_inputs
from suite.cases.stagewise import BENCH_WIDTHS
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study
from suite.timing import compile_timed, time_interleaved

__all__ = ["HIDDEN", "QUICK_HIDDEN", "N", "K", "widths", "inputs", "programs", "matmul_rate",
           "measure", "accuracy", "run", "render", "STUDY"]

HIDDEN = (8, 12, 17, 24, 34, 48, 70)
QUICK_HIDDEN = (8, 24)
N = 64
K = 10  # Lanczos: the top K eigenvalues
KW = dict(activation="tanh", loss="mse", l2=0.0)
CURVES = ("full", "jax.hessian", "diagonal", "blocks", "lanczos")
HVP_CURVES = ("hvp", "jvp_grad", "grad", "jax.grad")


def widths(h):
    return [h, h, h, 10]


def _param_count(w):
    return sum((a + 1) * b for a, b in zip(w[:-1], w[1:], strict=True))


def inputs(w, loss="mse", device=None):
    """params, x, y (tanh MLP of widths w, N samples, float64) and a direction v."""
    i = mlp_inputs(jax.random.PRNGKey(0), w, N, "float64", loss=loss, activation="tanh")
    i["v"] = jax.tree_util.tree_map(jnp.ones_like, i["params"])
    return jax.device_put(i, device)


def programs(p_count, kw):
    """name -> inputs -> output for every program timed here (inputs: params, x, y, v)."""
    def lanczos(i):
        matvec = stagewise.hessian_matvec(i["params"], i["x"], i["y"], **kw)
        return spectrum.lanczos(matvec, p_count, K, key=jax.random.PRNGKey(0))[0]

    return {
        "full": lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **kw),
        "jax.hessian": lambda i: autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"], **kw),
        "diagonal": lambda i: stagewise.hessian_diagonal(i["params"], i["x"], i["y"], **kw),
        "blocks": lambda i: stagewise.hessian_blocks(i["params"], i["x"], i["y"], **kw),
        "lanczos": lanczos,
        "fill": lambda i: jnp.full((p_count, p_count), i["x"][0, 0]),
        "hvp": lambda i: stagewise.hvp(i["params"], i["x"], i["y"], i["v"], **kw),
        "jvp_grad": lambda i: autodiff.hvp(lambda p: mlp.loss(p, i["x"], i["y"], **kw),
                                           i["params"], i["v"]),
        "grad": lambda i: mlp.grad(i["params"], i["x"], i["y"], **kw),
        "jax.grad": lambda i: autodiff.grad(lambda p: mlp.loss(p, i["x"], i["y"], **kw))(
            i["params"]),
    }


def matmul_rate(device=None, n=1024):
    """float64 GFLOP/s of a compiled (n x n) @ (n x n), the median of interleaved rounds."""
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(n, n))), device)
    fn, _ = compile_timed(lambda m: m @ m, a)
    (t,), _ = time_interleaved([fn], a, repeats=7)
    return 2 * n**3 / t / 1e9


def measure(h, *, device=None, rate):
    """One row: medians (seconds) of every program at hidden width h, and the floor."""
    w = widths(h)
    p_count = _param_count(w)
    data = inputs(w, device=device)
    compiled = {k: compile_timed(f, data)[0] for k, f in programs(p_count, KW).items()}
    big = [compiled[k] for k in CURVES + ("fill",)]
    budget = 2.0 if p_count < 4000 else 0.5
    big_t, _ = time_interleaved(big, data, budget_s=budget, min_repeats=3, max_repeats=20)
    small_t, _ = time_interleaved([compiled[k] for k in HVP_CURVES], data, budget_s=0.5,
                                  min_repeats=20, max_repeats=2000)
    row = dict(h=h, P=p_count, **dict(zip(CURVES + ("fill",), big_t, strict=True)),
               **dict(zip(HVP_CURVES, small_t, strict=True)))
    row["floor"] = row["fill"] + 2 * N * p_count**2 / (rate * 1e9)
    return row


def accuracy(w, *, samples=200, device=None):
    """Lanczos' top K against eigvalsh of jax.hessian; Hutchinson against the exact trace
    (the sum of hessian_diagonal), itself against the trace of jax.hessian."""
    kw = dict(activation="tanh", loss="softmax_cross_entropy", l2=0.0)
    i = inputs(w, loss="softmax_cross_entropy", device=device)
    p_count = _param_count(w)

    def manual(i):
        matvec = stagewise.hessian_matvec(i["params"], i["x"], i["y"], **kw)
        top = spectrum.lanczos(matvec, p_count, K, key=jax.random.PRNGKey(0))[0]
        est, se = spectrum.hutchinson_trace(matvec, p_count, key=jax.random.PRNGKey(1),
                                            samples=samples)
        diagonal = stagewise.hessian_diagonal(i["params"], i["x"], i["y"], **kw)
        return top, est, se, jnp.sum(ravel_pytree(diagonal)[0])

    top, est, se, trace = (np.asarray(t) for t in jax.jit(manual)(i))
    h = np.asarray(jax.jit(lambda i: autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"],
                                                      **kw))(i))
    exact = np.linalg.eigvalsh(h)[::-1][:K]
    return dict(P=p_count, top=top, exact=exact,
                lanczos_rel=float(np.max(np.abs(top - exact) / np.abs(exact))),
                estimate=float(est), se=float(se), trace=float(trace),
                z=float((est - trace) / se),
                trace_rel=float(abs(trace - np.trace(h)) / abs(np.trace(h))))


def run(*, quick: bool = False, device=None) -> Outcome:
    rate = matmul_rate(device)
    rows = [measure(h, device=device, rate=rate) for h in (QUICK_HIDDEN if quick else HIDDEN)]
    acc = accuracy(widths(24) if quick else BENCH_WIDTHS["3k"], device=device)
    checks = [
        Check("lanczos", acc["lanczos_rel"] <= 1e-8,
              f"top {K} eigenvalues at P = {acc['P']}: max relative error "
              f"{acc['lanczos_rel']:.1e} against eigvalsh of jax.hessian (bound 1e-8)"),
        Check("hutchinson", abs(acc["z"]) <= 3,
              f"estimate {acc['estimate']:.6g} ± {acc['se']:.2g} vs exact trace "
              f"{acc['trace']:.6g}: {acc['z']:+.2f} standard errors (bound 3)"),
        Check("trace", acc["trace_rel"] <= 1e-12,
              f"sum of hessian_diagonal vs trace of jax.hessian: {acc['trace_rel']:.1e} "
              "relative (bound 1e-12)"),
    ]
    last = rows[-1]
    figures = dict(largest_P=last["P"], matmul_gflops=rate,
                   full_speedup=last["jax.hessian"] / last["full"],
                   diagonal_speedup=last["jax.hessian"] / last["diagonal"],
                   blocks_speedup=last["jax.hessian"] / last["blocks"],
                   full_over_floor=last["full"] / last["floor"],
                   hvp_over_jvp_grad=last["hvp"] / last["jvp_grad"],
                   hvp_over_grad=last["hvp"] / last["grad"],
                   lanczos_rel=acc["lanczos_rel"], hutchinson_z=acc["z"])
    return Outcome(figures=figures, checks=checks, table=rows, data=acc)


LABELS = {"full": "stagewise.hessian (P x P)", "jax.hessian": "jax.hessian (P x P)",
          "diagonal": "hessian_diagonal", "blocks": "hessian_blocks",
          "lanczos": f"Lanczos top {K} on the hvp", "floor": "machine floor (fill + 2NP² flops)"}


def _plot(rows, path):
    fig, axes = plots.figure(1, 2, width=12, height=4.4,
                             title=f"Curvature cost against P: tanh MLPs [h, h, h, 10], N = {N}, "
                                   "float64, CPU (medians)")
    p = [r["P"] for r in rows]
    for k, name in enumerate(CURVES + ("floor",)):
        style = dict(ls="--", color="0.5") if name == "floor" else dict(marker="o",
                                                                          color=f"C{k}")
        axes[0].plot(p, [r[name] for r in rows], label=LABELS[name], **style)
    axes[0].set_title("a whole matrix, its diagonal, its blocks, its top eigenvalues")
    for k, (name, label) in enumerate((("hvp", "stagewise.hvp"),
                                       ("jvp_grad", "jax.jvp of jax.grad"),
                                       ("grad", "mlp.grad (one gradient)"),
                                       ("jax.grad", "jax.grad"))):
        axes[1].plot(p, [r[name] for r in rows], marker="o", color=f"C{k}", label=label)
    axes[1].set_title("one Hessian-vector product against one gradient")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("P (parameters)")
        ax.set_ylabel("time (s)")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def render(result: StudyResult, out_dir: str) -> str:
    rows, f, acc = result.outcome.table, result.figures, result.outcome.data
    plot = _plot(rows, f"{out_dir}/stagewise_curvature_cost.png")
    lines = [
        f"Tanh MLPs [h, h, h, 10], N = {N}, float64, mse; every program compiled, then timed "
        "in interleaved rounds (medians; the CPU is shared, so ratios are what to quote). "
        "floor = the time to fill a fresh (P, P) buffer + 2 N P² flops at the measured "
        f"float64 matmul rate ({f['matmul_gflops']:.1f} GFLOP/s).", "",
        "| P | full | jax.hessian | speed-up | floor | full / floor | diagonal | blocks | "
        f"Lanczos top {K} | hvp | jvp of grad | grad | hvp / grad |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(t):
        return f"{1e3 * t:.3g} ms"

    for r in rows:
        lines.append(
            f"| {r['P']} | {ms(r['full'])} | {ms(r['jax.hessian'])} | "
            f"{r['jax.hessian'] / r['full']:.1f}x | {ms(r['floor'])} | "
            f"{r['full'] / r['floor']:.2f} | {ms(r['diagonal'])} | {ms(r['blocks'])} | "
            f"{ms(r['lanczos'])} | {1e6 * r['hvp']:.0f} µs | {1e6 * r['jvp_grad']:.0f} µs | "
            f"{1e6 * r['grad']:.0f} µs | {r['hvp'] / r['grad']:.2f} |")
    lines += [
        "", f"![curvature cost]({plot})", "",
        f"At P = {f['largest_P']} the whole stagewise Hessian is {f['full_speedup']:.1f}x "
        f"faster than jax.hessian and {f['full_over_floor']:.2f}x the machine floor; the "
        f"diagonal is {f['diagonal_speedup']:.0f}x and the blocks {f['blocks_speedup']:.1f}x "
        f"faster than jax.hessian. One hvp costs {f['hvp_over_jvp_grad']:.2f}x jax.jvp of "
        f"jax.grad and {f['hvp_over_grad']:.2f}x one hand-derived gradient.", "",
        f"Spectrum and trace at P = {acc['P']} (softmax cross-entropy): Lanczos' top {K} "
        f"agree with eigvalsh of jax.hessian to {acc['lanczos_rel']:.1e} relative (largest "
        f"{acc['exact'][0]:.6g}); Hutchinson's estimate {acc['estimate']:.6g} ± "
        f"{acc['se']:.2g} is {acc['z']:+.2f} standard errors from the exact trace "
        f"{acc['trace']:.6g} (the sum of the exact diagonal, {acc['trace_rel']:.0e} from the "
        "trace of jax.hessian)."]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="curvature_cost", family="stagewise",
    title="What curvature costs: Hessian, diagonal, blocks, spectrum and trace against P",
    run=run, render=render))
