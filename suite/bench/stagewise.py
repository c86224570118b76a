"""Stagewise-Hessian measurements beyond the common timing table (a bench extra).

1. Matmul peak: a compiled float64 (n x n) @ (n x n), 2 n³ flops / median time.
2. The machine floor next to the stagewise time, on the bench shapes (tanh, float64,
   N = 64, P ≈ 1k, 3k, 10k): the time to fill a fresh (P, P) buffer plus 2 N P² flops
   (every entry a product over the N samples) at that peak. manual.stagewise.hessian,
   jax.hessian and the fill are timed in interleaved rounds (medians), so the speed-up
   and the distance to the floor come from the same rounds. At P ≈ 10k the diagonal and
   the blocks join those rounds.
3. One Hessian-vector product (manual.stagewise.hvp) against jax.jvp of jax.grad and
   against one gradient (manual.mlp.grad, jax.grad), at P ≈ 10k.
4. Compiled temporary memory (XLA memory_analysis().temp_size_in_bytes, compile only)
   of stagewise and jax.hessian at P ≈ 9k, N = 1024; stagewise also without its
   sample chunking, for transparency.
5. The largest P: widths of a depth-3 tanh MLP (N = 64) grow by x1.25 per step; at
   each step both are compiled (not run) and their temp + output bytes read from
   memory_analysis. The search stops at the first P where jax.hessian's needs exceed
   the machine's physical memory; stagewise is then run there if its needs fit in
   MemAvailable minus 4 GiB headroom, else the previous P is
   reported as the largest that ran.
"""

import os

import jax
import jax.numpy as jnp

from manual import mlp, stagewise
from reference import autodiff
from suite.cases.common import mlp_inputs
from suite.cases.stagewise import BENCH_WIDTHS
from suite.studies import curvature_cost
from suite.timing import compile_timed, median_time, time_interleaved

__all__ = ["matmul_peak", "floor_table", "hvp_table", "extra"]

GIB = 2**30
HEADROOM = 4 * GIB  # kept free for the OS and the rest of the process


def matmul_peak(n=2048, device=None):
    a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float64), device)
    fn = jax.jit(lambda m: m @ m).lower(a).compile()
    return 2 * n**3 / median_time(fn, a) / 1e9


def _param_count(widths):
    return sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))


KW = dict(activation="tanh", loss="mse", l2=0.0)


def _fns(widths, n, device):
    inputs = jax.device_put(mlp_inputs(jax.random.PRNGKey(0), widths, n, "float64",
                                       loss="mse", activation="tanh"), device)

    def sw(i):
        return stagewise.hessian(i["params"], i["x"], i["y"], **KW)

    def ad(i):
        return autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"], **KW)

    def unchunked(i):
        return stagewise.curvature(i["params"], i["x"], i["y"], **KW, chunk_bytes=None)

    return inputs, sw, ad, unchunked


def _memory(fn, inputs):
    """(temp bytes, output bytes) of the compiled fn, compile only."""
    analysis = jax.jit(fn).lower(inputs).compile().memory_analysis()
    return analysis.temp_size_in_bytes, analysis.output_size_in_bytes


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total // 2, total


def _row(names, times):
    return dict(zip(names, times, strict=True))


def floor_table(peak, *, device=None, echo=print, n=64):
    """Stagewise against jax.hessian and the floor on each bench shape; the rows."""
    echo(f"{'P':>6} {'stagewise':>10} {'jax.hessian':>12} {'speed-up':>8} {'fill':>8} "
         f"{'floor':>8} {'/floor':>6}   (medians, ms; floor = fill + 2 N P^2 flops at peak)")
    rows = []
    for label, widths in BENCH_WIDTHS.items():
        p = _param_count(widths)
        data = curvature_cost.inputs(widths, device=device)
        programs = curvature_cost.programs(p, KW)
        names = ["full", "jax.hessian", "fill"] + (["diagonal", "blocks"] if label == "10k" else [])
        compiled = [compile_timed(programs[k], data)[0] for k in names]
        times, _ = time_interleaved(compiled, data, budget_s=3.0, min_repeats=5, max_repeats=30)
        row = _row(names, times)
        row.update(P=p, floor=row["fill"] + 2 * n * p**2 / (peak * 1e9))
        echo(f"{p:>6} {1e3 * row['full']:>10.1f} {1e3 * row['jax.hessian']:>12.1f} "
             f"{row['jax.hessian'] / row['full']:>7.1f}x {1e3 * row['fill']:>8.1f} "
             f"{1e3 * row['floor']:>8.1f} {row['full'] / row['floor']:>6.2f}")
        if "diagonal" in row:
            echo(f"{'':>6} hessian_diagonal {1e3 * row['diagonal']:.2f} ms "
                 f"({row['jax.hessian'] / row['diagonal']:.0f}x faster than jax.hessian), "
                 f"hessian_blocks {1e3 * row['blocks']:.1f} ms "
                 f"({row['jax.hessian'] / row['blocks']:.1f}x)")
        rows.append(row)
    return rows


def hvp_table(*, device=None, echo=print):
    """hvp against jax.jvp of jax.grad and one gradient at P ≈ 10k; the row."""
    widths = BENCH_WIDTHS["10k"]
    p = _param_count(widths)
    data = curvature_cost.inputs(widths, device=device)
    programs = curvature_cost.programs(p, KW)
    names = ["hvp", "jvp_grad", "grad", "jax.grad"]
    compiled = [compile_timed(programs[k], data)[0] for k in names]
    times, samples = time_interleaved(compiled, data, budget_s=5.0, min_repeats=50,
                                      max_repeats=5000)
    row = dict(_row(names, times), P=p)
    echo(f"one Hessian-vector product at P={p} (medians of {len(samples[0])} interleaved "
         f"rounds): stagewise.hvp {1e6 * row['hvp']:.0f} us, jax.jvp of jax.grad "
         f"{1e6 * row['jvp_grad']:.0f} us ({row['hvp'] / row['jvp_grad']:.2f}x), one hand "
         f"gradient {1e6 * row['grad']:.0f} us (hvp = {row['hvp'] / row['grad']:.2f} "
         f"gradients), jax.grad {1e6 * row['jax.grad']:.0f} us")
    return row


def extra(*, device, echo=print):
    """Print every measurement of the module doc; return the floor and hvp rows (seconds)."""
    peak = matmul_peak(device=device)
    echo(f"matmul peak (float64 2048^3, compiled, median of 5): {peak:.1f} GFLOP/s")
    echo("stagewise Hessian, jax.hessian and the machine floor (tanh, float64, N=64):")
    rows = [dict(row, table="floor", matmul_gflops=peak)
            for row in floor_table(peak, device=device, echo=echo)]
    rows.append(dict(hvp_table(device=device, echo=echo), table="hvp"))

    widths = [64, 64, 64, 10]
    inputs, sw, ad, unchunked = _fns(widths, 1024, device)
    (t_sw, o_sw), (t_ad, _), (t_un, _) = (_memory(f, inputs) for f in (sw, ad, unchunked))
    echo(f"compiled temp memory, P={_param_count(widths)} N=1024 (output {o_sw / 2**20:.0f} MiB "
         f"each): stagewise {t_sw / 2**20:.0f} MiB (unchunked {t_un / 2**20:.0f} MiB), "
         f"jax.hessian {t_ad / 2**20:.0f} MiB: {t_ad / max(t_sw, 1):.0f}x less "
         f"({t_ad / max(t_un, 1):.1f}x unchunked)")

    available, total = _mem_available()
    echo(f"largest P (N=64, depth 3 tanh; physical {total / GIB:.1f} GiB, available "
         f"{available / GIB:.1f} GiB, headroom {HEADROOM / GIB:.0f} GiB):")
    hidden, last_fit = 64, None
    while True:
        widths = [hidden, hidden, hidden, 10]
        inputs, sw, ad, _ = _fns(widths, 64, device)
        need_sw, need_ad = sum(_memory(sw, inputs)), sum(_memory(ad, inputs))
        p = _param_count(widths)
        fits = need_sw <= available - HEADROOM
        echo(f"  P={p:<7} stagewise needs {need_sw / GIB:6.2f} GiB, "
             f"jax.hessian {need_ad / GIB:6.2f} GiB")
        if not fits:
            echo(f"  stagewise would exceed the budget here; largest P that fits: {last_fit}")
            return rows
        if need_ad > total:
            t = median_time(jax.jit(sw).lower(inputs).compile(), inputs, repeats=1)
            echo(f"  largest P: {p} — stagewise ran in {t:.1f} s; jax.hessian needs "
                 f"{need_ad / GIB:.1f} GiB > {total / GIB:.1f} GiB physical")
            rows.append(dict(table="largest P", P=p, seconds=t, stagewise_bytes=need_sw,
                             jax_hessian_bytes=need_ad))
            return rows
        last_fit = p
        hidden = int(round(hidden * 1.25))
