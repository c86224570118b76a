"""Pooling cases: manual.pool's max and average backward against jax.vjp of the forward.

The forward is ``lax.reduce_window`` (max with -inf padding, sum of the zero-padded
window / k_h k_w); the oracle is jax.vjp of it, the witness the float64 finite
difference of <dY, pool(x)>. Max-pool inputs are distinct values (ranks of a normal
draw, 0.01 apart), so no window has a tie and a finite-difference step (at most ~7e-4
per entry) never changes an argmax; the tie convention is tested on its own in
suite/tests/test_pool.py. ``PoolConfig`` and ``draw_config`` define the sweep space
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
    description="Windows (k_h, k_w) with stride and torch-style padding (max pads with "
                "−inf, avg counts the padded zeros; p ≤ k/2). Max: dY goes to each "
                "window's argmax — on ties to the first in row-major window order, as "
                "jax.grad does; avg: dY / (k_h k_w) to every pixel of the window "
                "(Bouvrie, subsampling layers). Overlapping windows accumulate (col2im). "
                "`pool/sweep-k` are fixed draws from the hypothesis sweep's space.",
))

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


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    n: int
    c: int
    size: tuple               # (H, W)
    window: tuple             # (k_h, k_w)
    stride: tuple = None      # None: the window
    padding: tuple = (0, 0)

    @property
    def kwargs(self):
        return dict(window=_int_or_pair(self.window),
                    stride=None if self.stride is None else _int_or_pair(self.stride),
                    padding=_int_or_pair(self.padding))

    @property
    def sizes(self):
        return dict(N=self.n, C=self.c, HW="x".join(map(str, self.size)),
                    k="x".join(map(str, self.window)),
                    s="=k" if self.stride is None else _int_or_pair(self.stride),
                    p=_int_or_pair(self.padding))

    def out(self):
        stride = self.window if self.stride is None else self.stride
        return tuple((h + 2 * p - k) // s + 1
                     for h, p, k, s in zip(self.size, self.padding, self.window, stride))

    def builder(self, kind):
        def build(key, dtype):
            k = split(key, ["x", "dy"])
            shape = (self.n, self.c) + tuple(self.size)
            x = (distinct_values(k["x"], shape, dtype) if kind == "max"
                 else host_normal(k["x"], shape, dtype))
            return dict(x=x, dy=host_normal(k["dy"], (self.n, self.c) + self.out(), dtype))
        return build


def pool_case(name, config, kind, **kwargs):
    """A vjp_case of ``kind`` ("max" or "avg") pooling for ``config``."""
    forward, backward = KINDS[kind]
    return vjp_case(name=name, family="pool", build=config.builder(kind),
                    forward=functools.partial(forward, **config.kwargs),
                    backward=functools.partial(backward, **config.kwargs),
                    primals=("x",), sizes=dict(kind=kind, **config.sizes), **kwargs)


def draw_config(integer):
    """A random valid PoolConfig; ``integer(lo, hi)`` draws from [lo, hi] inclusive.

    Windows 1x1 to 4x4 (non-square too), stride = window or 1 to 5 (overlapping,
    tiling and gapped windows), padding 0 to k/2, H and W from the smallest that fits
    the window up to 6 more, 1 to 3 images of 1 to 3 channels.
    """
    window = (integer(1, 4), integer(1, 4))
    stride = None if integer(0, 3) == 0 else (integer(1, 5), integer(1, 5))
    padding = tuple(integer(0, k // 2) for k in window)
    size = tuple(max(1, k - 2 * p) + integer(0, 6) for k, p in zip(window, padding))
    return PoolConfig(n=integer(1, 3), c=integer(1, 3), size=size, window=window,
                      stride=stride, padding=padding)


# (label, config, tier): a few in every `make test`, the rest with the slow marker
# and in the report (compiling is what a case costs on a CPU).
NAMED = (
    ("2x2", PoolConfig(2, 3, (8, 8), (2, 2)), "test"),
    ("3x3-s1-p1", PoolConfig(2, 3, (8, 8), (3, 3), (1, 1), (1, 1)), "test"),
    ("3x3-s2-p1", PoolConfig(2, 3, (9, 8), (3, 3), (2, 2), (1, 1)), "slow"),
    ("stride-gt-window", PoolConfig(1, 2, (10, 11), (2, 2), (3, 4)), "slow"),
    ("nonsquare", PoolConfig(2, 2, (7, 10), (3, 2), (2, 1), (1, 0)), "slow"),
    ("global", PoolConfig(2, 3, (5, 4), (5, 4)), "slow"),
    ("1x1", PoolConfig(1, 2, (3, 4), (1, 1), (2, 1)), "slow"),
    ("all1", PoolConfig(1, 1, (1, 1), (1, 1)), "slow"),
    ("large", PoolConfig(8, 16, (32, 32), (3, 3), (2, 2), (1, 1)), "report"),
)

NAMED_CONFIGS = {label: config for label, config, _ in NAMED}

# Draws of the hypothesis sweep in suite/tests/test_pool.py, max and avg drawn with the
# geometry, each draw in float32 and float64: "test" in every `make test`, "slow"
# behind the slow marker.
SWEEP_EXAMPLES = {"test": 200, "slow": 400}

for label, config, tier in NAMED:
    for kind in KINDS:
        register(pool_case(f"pool/{kind}/{label}", config, kind, tier=tier))

# A fixed, reproducible sample of the sweep space for the report.
_rng = np.random.default_rng(20240608)
SWEEP = tuple(draw_config(lambda lo, hi: int(_rng.integers(lo, hi + 1))) for _ in range(24))
for k, config in enumerate(SWEEP):
    for kind in KINDS:
        register(pool_case(f"pool/{kind}/sweep-{k}", config, kind, tier="slow"))

# Benchmarks: a typical CNN pooling layer, tiling and overlapping.
for label, config in (("bench-2x2", PoolConfig(32, 64, (32, 32), (2, 2))),
                      ("bench-3x3-s2-p1", PoolConfig(32, 64, (32, 32), (3, 3), (2, 2), (1, 1)))):
    for kind in KINDS:
        register(pool_case(f"pool/{kind}/{label}", config, kind, tier="bench"))
