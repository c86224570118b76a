"""Pooling cases: manual.pool's max and average backward against jax.vjp of the forward.

The forward is ``lax.reduce_window`` (max with -inf padding; the window sum of the
zero-padded input divided by the per-window divisor), or for dilated max pooling the
window's taps and their first argmax; the oracle is jax.vjp of it, the witness the
float64 finite difference of <dY, pool(x)>. Max-pool inputs are distinct values (ranks
of a normal draw, 0.01 apart), so no window has a tie and a finite-difference step (at
most ~7e-4 per entry) never changes an argmax; the tie convention is tested on its own
in suite/tests/test_pool.py. ``PoolConfig`` and ``draw_config`` define the sweep space
of the hypothesis sweep there.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from manual import pool
from suite.cases import Family, register, register_family
from suite.cases.common import normal as host_normal
from suite.cases.common import split, vjp_case

register_family(Family(
    name="pool",
    title="Max and average pooling (subsampling)",
    description="Windows (k_h, k_w) with stride, torch-style padding (max pads with "
                "−inf, avg with zeros; p ≤ k/2), dilation (max), ceil_mode (a last "
                "partial window, which must start inside the input or the left padding), "
                "count_include_pad and divisor_override (avg), unbatched input. Max: dY "
                "goes to each window's argmax — on ties to the first in row-major window "
                "order, as jax.grad does; avg: dY / D[i, j] to every pixel of the window, "
                "D the per-window divisor map (Bouvrie, subsampling layers). Overlapping "
                "windows accumulate (col2im). `pool/sweep-k` are fixed draws from the "
                "hypothesis sweep's space.",
))

__all__ = ["KINDS", "TIE_FREE_GAP", "distinct_values", "torch_out", "every_window_holds_a_pixel",
           "PoolConfig", "pool_case", "draw_config", "NAMED", "NAMED_ONE_KIND", "NAMED_CONFIGS",
           "SWEEP_EXAMPLES", "SWEEP", "BENCH"]

KINDS = {
    "max": (pool.max_pool2d, pool.max_pool2d_backward),
    "avg": (pool.avg_pool2d, pool.avg_pool2d_backward),
}

# Gap between the distinct values of a max-pool input: far above the finite-difference
# step (h ≈ 7e-4 along a unit direction) and float32's resolution at these magnitudes.
TIE_FREE_GAP = 0.01


def distinct_values(key, shape, dtype):
    """Ranks of a normal draw, centred and TIE_FREE_GAP apart: no two entries are equal."""
    z = np.asarray(host_normal(key, shape, "float64")).ravel()
    ranks = np.argsort(np.argsort(z, kind="stable"), kind="stable")
    values = (ranks - (z.size - 1) / 2.0) * TIE_FREE_GAP
    return jnp.asarray(values.reshape(shape).astype(dtype))


def _int_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def torch_out(h, k, s, p, d, ceil_mode):
    """torch's pooled size along one axis (pooling_output_shape), written out here so
    that the dy of a case does not come from the code under test."""
    out = (h + 2 * p - (k - 1) * d - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= h + p:  # would start in the right padding
        out -= 1
    return out


def every_window_holds_a_pixel(h, k, s, p, d, out):
    """No window of this axis has all its taps in the padding (or past it)."""
    return all(any(0 <= i * s + a * d - p < h for a in range(k)) for i in range(out))


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    n: int
    c: int
    size: tuple               # (H, W)
    window: tuple             # (k_h, k_w)
    stride: tuple = None      # None: the window
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)  # max pooling only (avg cases ignore it)
    ceil_mode: bool = False
    count_include_pad: bool = True      # avg only
    divisor_override: int = None        # avg only
    batched: bool = True      # False: one (C, H, W) image

    def kwargs(self, kind):
        kw = dict(window=_int_or_pair(self.window),
                  stride=None if self.stride is None else _int_or_pair(self.stride),
                  padding=_int_or_pair(self.padding), ceil_mode=self.ceil_mode)
        if kind == "max":
            return dict(kw, dilation=_int_or_pair(self.dilation))
        return dict(kw, count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)

    def sizes(self, kind):
        sizes = dict(N=self.n if self.batched else "-", C=self.c,
                     HW="x".join(map(str, self.size)), k="x".join(map(str, self.window)),
                     s="=k" if self.stride is None else _int_or_pair(self.stride),
                     p=_int_or_pair(self.padding))
        if kind == "max" and self.dilation != (1, 1):
            sizes["d"] = _int_or_pair(self.dilation)
        if self.ceil_mode:
            sizes["ceil"] = "yes"
        if kind == "avg" and not self.count_include_pad:
            sizes["pad_counts"] = "no"
        if kind == "avg" and self.divisor_override is not None:
            sizes["divisor"] = self.divisor_override
        return sizes

    def out(self, kind):
        stride = self.window if self.stride is None else self.stride
        dilation = self.dilation if kind == "max" else (1, 1)
        return tuple(torch_out(h, k, s, p, d, self.ceil_mode) for h, k, s, p, d
                     in zip(self.size, self.window, stride, self.padding, dilation,
                            strict=True))

    def builder(self, kind):
        def build(key, dtype):
            k = split(key, ["x", "dy"])
            batch = (self.n,) if self.batched else ()
            shape = batch + (self.c,) + tuple(self.size)
            x = (distinct_values(k["x"], shape, dtype) if kind == "max"
                 else host_normal(k["x"], shape, dtype))
            return dict(x=x, dy=host_normal(k["dy"], batch + (self.c,) + self.out(kind), dtype))
        return build


def pool_case(name, config, kind, **kwargs):
    """A vjp_case of ``kind`` ("max" or "avg") pooling for ``config``."""
    forward, backward = KINDS[kind]
    return vjp_case(name=name, family="pool", build=config.builder(kind),
                    forward=functools.partial(forward, **config.kwargs(kind)),
                    backward=functools.partial(backward, **config.kwargs(kind)),
                    primals=("x",), sizes=dict(kind=kind, **config.sizes(kind)), **kwargs)


def draw_config(integer):
    """A random valid PoolConfig; ``integer(lo, hi)`` draws from [lo, hi] inclusive.

    Windows 1x1 to 4x4 (non-square too), stride = window or 1 to 5 (overlapping,
    tiling and gapped windows), padding 0 to k/2, dilation 1 to 3 in half the draws
    (max pooling; with padding too), ceil_mode in half, count_include_pad False in a
    third and a divisor_override of 1 to 6 in a quarter (avg pooling), H and W from the
    smallest with one window (under ceil_mode one hanging up to s - 1 past the padding)
    up to 6 more, grown where a dilated window would see only padding; 1 to 3 images of
    1 to 3 channels, or one unbatched (C, H, W) image in a quarter of the draws.
    """
    window = (integer(1, 4), integer(1, 4))
    stride = None if integer(0, 3) == 0 else (integer(1, 5), integer(1, 5))
    padding = tuple(integer(0, k // 2) for k in window)
    dilation = (1, 1) if integer(0, 1) == 0 else (integer(1, 3), integer(1, 3))
    ceil_mode = integer(0, 1) == 1
    count_include_pad = integer(0, 2) != 0
    divisor_override = integer(1, 6) if integer(0, 3) == 0 else None
    steps = window if stride is None else stride
    size = []
    for k, s, p, d in zip(window, steps, padding, dilation, strict=True):
        h = max(1, (k - 1) * d + 1 - 2 * p - (s - 1 if ceil_mode else 0)) + integer(0, 6)
        # a window of -inf taps only has no gradient to check (its convention is
        # tested on its own): grow the input until every window holds a pixel
        while not every_window_holds_a_pixel(h, k, s, p, d, torch_out(h, k, s, p, d,
                                                                       ceil_mode)):
            h += 1
        size.append(h)
    return PoolConfig(n=integer(1, 3), c=integer(1, 3), size=tuple(size), window=window,
                      stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
                      count_include_pad=count_include_pad, divisor_override=divisor_override,
                      batched=integer(0, 3) != 0)


# (label, config, tier): a few in every `make test`, the rest with the slow marker
# and in the report (compiling is what a case costs on a CPU; the sweep draws every
# option in every `make test`).
NAMED = (
    ("2x2", PoolConfig(2, 3, (8, 8), (2, 2)), "test"),
    ("3x3-s1-p1", PoolConfig(2, 3, (8, 8), (3, 3), (1, 1), (1, 1)), "test"),
    # GoogLeNet's stem: 3x3, stride 2, ceil_mode; the last window hangs one row off
    ("3x3-s2-ceil", PoolConfig(2, 3, (8, 7), (3, 3), (2, 2), ceil_mode=True), "slow"),
    ("3x3-s2-p1", PoolConfig(2, 3, (9, 8), (3, 3), (2, 2), (1, 1)), "slow"),
    ("stride-gt-window", PoolConfig(1, 2, (10, 11), (2, 2), (3, 4)), "slow"),
    ("nonsquare", PoolConfig(2, 2, (7, 10), (3, 2), (2, 1), (1, 0)), "slow"),
    ("global", PoolConfig(2, 3, (5, 4), (5, 4)), "slow"),
    ("1x1", PoolConfig(1, 2, (3, 4), (1, 1), (2, 1)), "slow"),
    ("all1", PoolConfig(1, 1, (1, 1), (1, 1)), "slow"),
    # torch drops the ceil window that would start in the right padding (5 + 1 = 6)
    ("ceil-dropped", PoolConfig(2, 2, (5, 6), (2, 2), (2, 2), (1, 1), ceil_mode=True), "slow"),
    # ceil_mode with a window larger than the input: it starts inside and hangs off
    ("ceil-window-past-input", PoolConfig(1, 2, (1, 3), (2, 4), (2, 4), ceil_mode=True),
     "slow"),
    ("unbatched-ceil", PoolConfig(1, 3, (7, 6), (3, 2), (2, 2), (1, 1), ceil_mode=True,
                                  batched=False), "slow"),
    ("large", PoolConfig(8, 16, (32, 32), (3, 3), (2, 2), (1, 1)), "report"),
)

# The options of one kind only: (label, config, kind, tier).
NAMED_ONE_KIND = (
    ("dilated-p1", PoolConfig(2, 2, (9, 8), (3, 3), (1, 1), (1, 1), dilation=(2, 2)),
     "max", "slow"),
    ("dilated-ceil", PoolConfig(2, 2, (8, 9), (2, 3), (2, 2), (1, 1), dilation=(3, 2),
                                ceil_mode=True), "max", "test"),
    ("exclude-pad", PoolConfig(2, 3, (8, 7), (3, 3), (1, 1), (1, 1), count_include_pad=False),
     "avg", "slow"),
    ("exclude-pad-ceil", PoolConfig(2, 2, (7, 8), (3, 2), (2, 2), (1, 1), ceil_mode=True,
                                    count_include_pad=False), "avg", "slow"),
    ("divisor-override", PoolConfig(2, 2, (6, 7), (2, 3), (2, 2), (1, 1), ceil_mode=True,
                                    divisor_override=5), "avg", "slow"),
    ("divisor-negative", PoolConfig(1, 2, (6, 6), (2, 2), divisor_override=-3), "avg", "slow"),
)

NAMED_CONFIGS = {label: config for label, config, _ in NAMED}
NAMED_CONFIGS.update({label: config for label, config, _, _ in NAMED_ONE_KIND})

# Draws of the hypothesis sweep in suite/tests/test_pool.py, max and avg drawn with the
# geometry: "test" in every `make test` (one dtype per draw), "slow" behind the slow
# marker (both dtypes per draw).
SWEEP_EXAMPLES = {"test": 80, "slow": 400}

for label, config, tier in NAMED:
    for kind in KINDS:
        register(pool_case(f"pool/{kind}/{label}", config, kind, tier=tier))
for label, config, kind, tier in NAMED_ONE_KIND:
    register(pool_case(f"pool/{kind}/{label}", config, kind, tier=tier))

# A fixed, reproducible sample of the sweep space for the report.
_rng = np.random.default_rng(20240608)
SWEEP = tuple(draw_config(lambda lo, hi: int(_rng.integers(lo, hi + 1))) for _ in range(24))
for k, config in enumerate(SWEEP):
    for kind in KINDS:
        register(pool_case(f"pool/{kind}/sweep-{k}", config, kind, tier="slow"))

# Benchmarks: a typical CNN pooling layer, tiling and overlapping; GoogLeNet's 3x3 /
# stride 2 / ceil_mode stem pooling; average pooling that excludes the padding; a
# dilated max pooling.
BENCH = (
    ("bench-2x2", PoolConfig(32, 64, (32, 32), (2, 2)), KINDS),
    ("bench-3x3-s2-p1", PoolConfig(32, 64, (32, 32), (3, 3), (2, 2), (1, 1)), KINDS),
    ("bench-3x3-s2-ceil", PoolConfig(32, 64, (32, 32), (3, 3), (2, 2), ceil_mode=True), KINDS),
    ("bench-3x3-s1-p1-exclude-pad", PoolConfig(32, 64, (32, 32), (3, 3), (1, 1), (1, 1),
                                               count_include_pad=False), ("avg",)),
    ("bench-3x3-d2-p1", PoolConfig(32, 64, (32, 32), (3, 3), (1, 1), (1, 1), dilation=(2, 2)),
     ("max",)),
)
for label, config, kinds in BENCH:
    for kind in kinds:
        register(pool_case(f"pool/{kind}/{label}", config, kind, tier="bench"))
