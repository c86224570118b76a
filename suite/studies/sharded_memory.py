"""Study: per-device memory of the row-sharded stagewise Hessian against one device's.

XLA's own buffer assignment (``compiled.memory_analysis()``: arguments, output and
temporaries of the program one device runs), compile only — nothing of size P² is
allocated. The network is a tanh MLP with widths h-h-h-10 (h odd, so 8 divides
P = 2 (h + 1)(h + 5)), softmax cross-entropy, N = 64, float64, at two sizes:

    P ≈ 10k     h = 69 (P = 10 360): the bench size of the stagewise Hessian
    P big       the smallest such P whose full Hessian (P² · 8 bytes) exceeds 1.5 times
                one device's share of memory, so that it cannot be held by one device
                while a quarter of its rows can

A device's share is its own memory on an accelerator (``memory_stats()["bytes_limit"]``)
and the host's physical memory divided by the number of devices on a CPU, where the
forced host devices share one memory (and, here, two cores: any time measured on them
shows correctness only, never speed).

Checks:
    rows per device     each device's output is exactly P² · 8 / n_model bytes
    fits when sharded   at the big P, the single-device program needs more than a
                        device's share and the sharded one (model = 4) less
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

from manual import stagewise
from suite import sharded
from suite.results import Check, Outcome, StudyResult
from suite.studies import Study, register_study

__all__ = ["DEVICES", "N", "MESHES", "widths_for", "device_share", "memory", "run", "render",
           "STUDY"]

DEVICES = 4
N = 64
KW = dict(activation="tanh", loss="softmax_cross_entropy", l2=1e-4)
# (label, mesh axes) measured at P ≈ 10k; the big P is measured on the first only.
MESHES = (("model4", {"data": 1, "model": 4}), ("data2-model2", {"data": 2, "model": 2}),
          ("data4", {"data": 4}))
H_10K = 69


def widths_for(h: int) -> list[int]:
    """An MLP h-h-h-10: P = 2 (h + 1)(h + 5)."""
    return [h, h, h, 10]


def _params_count(widths):
    return sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))


def device_share(device: jax.Device, count: int) -> tuple[int, str]:
    """Bytes one device may use, and how that was found."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind}: memory_stats bytes_limit"
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // count, f"host memory {host / 2**30:.1f} GiB shared by {count} devices"


def _big_h(share: int) -> int:
    """The smallest odd h whose full Hessian exceeds 1.5 device shares."""
    p = math.sqrt(1.5 * share / 8)
    h = max(3, int(math.sqrt(p / 2)))
    h += 1 - h % 2
    while 8 * _params_count(widths_for(h)) ** 2 <= 1.5 * share:
        h += 2
    return h


def _abstract(widths):
    f64 = jnp.float64
    params = tuple((jax.ShapeDtypeStruct((a, b), f64), jax.ShapeDtypeStruct((b,), f64))
                   for a, b in zip(widths, widths[1:], strict=False))
    return params, jax.ShapeDtypeStruct((N, widths[0]), f64), jax.ShapeDtypeStruct((N,),
                                                                                    jnp.int32)


def memory(fn, widths) -> dict:
    """XLA's per-device bytes (arguments, output, temporaries) of ``fn``, compile only."""
    stats = jax.jit(fn).lower(*_abstract(widths)).compile().memory_analysis()
    out = dict(arguments=int(stats.argument_size_in_bytes),
               output=int(stats.output_size_in_bytes), temp=int(stats.temp_size_in_bytes))
    out["total"] = out["arguments"] + out["output"] + out["temp"]
    return out


def _mesh(shape, devices):
    return jax.make_mesh(tuple(shape.values()), tuple(shape),
                         devices=devices[:math.prod(shape.values())])


def run(*, quick: bool = False, device=None) -> Outcome:
    """Per-device memory of sharded.hessian and of stagewise.hessian, at P ≈ 10k and big."""
    del quick  # compile only: the full size costs no more than a small one
    device = device or jax.devices()[0]
    devices = jax.devices(device.platform)
    if len(devices) < DEVICES:
        raise ValueError(f"this study needs {DEVICES} {device.platform} devices, this process "
                         f"has {len(devices)} (backprop-suite report --devices {DEVICES})")
    share, share_source = device_share(device, len(devices))
    h_big = _big_h(share)
    table, checks = [], []
    with jax.default_device(device):
        for h, meshes in ((H_10K, MESHES), (h_big, MESHES[:1])):
            widths = widths_for(h)
            total = _params_count(widths)
            single = memory(lambda p, x, y: stagewise.hessian(p, x, y, **KW), widths)
            table.append(dict(P=total, widths="-".join(map(str, widths)), mesh="one device",
                              n_model=1, **single))
            for label, shape in meshes:
                mesh = _mesh(shape, devices)
                mem = memory(lambda p, x, y, mesh=mesh: sharded.hessian(p, x, y, mesh=mesh, **KW),
                             widths)
                n_model = shape.get("model", 1)
                table.append(dict(P=total, widths="-".join(map(str, widths)), mesh=label,
                                  n_model=n_model, **mem))
                expected = total * total * 8 // n_model
                checks.append(Check(f"rows per device P={total} {label}",
                                    mem["output"] == expected,
                                    f"output {mem['output']} bytes per device, P² · 8 / "
                                    f"{n_model} = {expected}"))
    big = [r for r in table if r["P"] == _params_count(widths_for(h_big))]
    one, split = big[0], big[1]
    checks.append(Check("fits when sharded", one["total"] > share >= split["total"],
                        f"P={one['P']}: one device needs {one['total'] / 2**30:.2f} GiB, "
                        f"sharded (model=4) {split['total'] / 2**30:.2f} GiB per device, a "
                        f"device's share is {share / 2**30:.2f} GiB"))
    figures = dict(share_bytes=share, share_source=share_source, platform=device.platform,
                   devices=len(devices), P_10k=_params_count(widths_for(H_10K)),
                   P_big=one["P"])
    for r in table:
        figures[f"P{r['P']}_{r['mesh'].replace(' ', '_')}_total_bytes"] = r["total"]
    return Outcome(figures=figures, checks=checks, table=table)


def _gib(x):
    return f"{x / 2**30:.3f}"


def render(result: StudyResult, out_dir: str) -> str:
    """The table, per device, in GiB; what the share is; the CPU caveat."""
    del out_dir
    fig = result.figures
    lines = [f"tanh MLP h-h-h-10, softmax cross-entropy, N={N}, float64: XLA's buffer "
             "assignment for one device's program (`compiled.memory_analysis()`, compile only). "
             f"A device's share: {_gib(fig['share_bytes'])} GiB ({fig['share_source']}).", "",
             "| P | widths | mesh | arguments (GiB) | output (GiB) | temporaries (GiB) | "
             "total per device (GiB) | total / one device's |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    single = {r["P"]: r["total"] for r in result.outcome.table if r["n_model"] == 1
              and r["mesh"] == "one device"}
    for r in result.outcome.table:
        lines.append(f"| {r['P']} | {r['widths']} | {r['mesh']} | {_gib(r['arguments'])} | "
                     f"{_gib(r['output'])} | {_gib(r['temp'])} | {_gib(r['total'])} | "
                     f"{r['total'] / single[r['P']]:.2f} |")
    lines += ["", "Each device of a `model` = n mesh holds P/n rows (P²/n numbers) of the result "
              "and computes only those (manual.stagewise.hessian_rows); the samples are split "
              "over `data` and summed with psum, so a `data`-only mesh holds the whole matrix "
              "on every device (data parallelism saves time, not memory)."]
    if fig["platform"] == "cpu":
        lines += ["", "On a CPU the devices are forced host devices "
                  "(`--xla_force_host_platform_device_count` / `jax_num_cpu_devices`): they "
                  "share one memory and the machine's cores, so these figures are what each "
                  "device's program would need, and any time measured on them shows "
                  "correctness only, never speed."]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="sharded_memory", family="sharded",
    title="Per-device memory of the row-sharded stagewise Hessian (XLA memory analysis)",
    run=run, render=render, devices=DEVICES))
