"""Stagewise-Hessian measurements beyond the common timing table (a bench extra).

1. Matmul peak: a compiled float64 (n x n) @ (n x n), 2 n³ flops / median time.
2. Achieved GFLOP/s of manual.stagewise.hessian on the bench shapes: 2 N P² / median,
   against that peak (2 N P² is the flop count of the blocks if all P² were computed
   by products over N samples; the stagewise code does about half of them, the upper
   blocks, so the figure is a work rate relative to the dense-Hessian budget).
3. Compiled temporary memory (XLA memory_analysis().temp_size_in_bytes, compile only)
   of stagewise and jax.hessian at P ≈ 9k, N = 1024; stagewise also without its
   sample chunking, for transparency.
4. The largest P: widths of a depth-3 tanh MLP (N = 64) grow by x1.25 per step; at
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
from suite.timing import median_time

__all__ = ["matmul_peak", "extra"]

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


def extra(*, device, echo=print):
    peak = matmul_peak(device=device)
    echo(f"matmul peak (float64 2048^3, compiled, median of 5): {peak:.1f} GFLOP/s")
    echo("stagewise achieved rate (2 N P^2 / median time):")
    for widths in BENCH_WIDTHS.values():
        inputs, sw, _, _ = _fns(widths, 64, device)
        t = median_time(jax.jit(sw).lower(inputs).compile(), inputs)
        p = _param_count(widths)
        rate = 2 * 64 * p**2 / t / 1e9
        echo(f"  P={p:<6} N=64  {1e3 * t:9.1f} ms  {rate:6.1f} GFLOP/s  "
             f"({100 * rate / peak:.0f}% of peak)")

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
            return
        if need_ad > total:
            t = median_time(jax.jit(sw).lower(inputs).compile(), inputs, repeats=1)
            echo(f"  largest P: {p} — stagewise ran in {t:.1f} s; jax.hessian needs "
                 f"{need_ad / GIB:.1f} GiB > {total / GIB:.1f} GiB physical")
            return
        last_fit = p
        hidden = int(round(hidden * 1.25))
