"""Convolution cases: manual.conv and manual.im2col against jax.vjp of conv2d.

Both implementations of the backward pass are checked against the same oracle (jax.vjp
of manual.conv.conv2d, which is ``lax.conv_general_dilated``) and the float64
finite-difference witness on <dY, conv2d(x, w, b)>. ``ConvConfig`` and ``draw_config``
define the sweep space; the hypothesis sweep in suite/tests/test_conv.py draws from it
and builds its cases with ``conv_case``, the same constructor as the entries here.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from manual import conv, im2col
from suite.cases import Family, register, register_family
from suite.cases.common import normal as host_normal
from suite.cases.common import split, vjp_case

register_family(Family(
    name="conv",
    title="Convolution (filtering) with stride, padding, dilation, groups",
    description="Y = X ⋆ W + b (NCHW, OIHW, torch semantics; padding symmetric, "
                "asymmetric, \"same\" or \"valid\"; unbatched (C, H, W) input too). dX: "
                "dY dilated by the stride, padded by (k−1)·d − p_lo before and "
                "(k−1)·d − p_hi + r after (r: the rows lost to the stride), correlated "
                "with the flipped, in/out-transposed kernel; dW: the padded input "
                "correlated with dY; db = Σ dY (Bouvrie, filtering layers). Cases "
                "`conv/...` use manual.conv (lax.conv_general_dilated as a forward "
                "primitive); `conv/im2col/...` use manual.im2col (patches as a matrix: "
                "two matrix products and a col2im scatter-add). Both against jax.vjp of "
                "conv2d; `conv/sweep-k` are fixed draws from the hypothesis sweep's space.",
))

__all__ = ["IMPLEMENTATIONS", "resolve_padding", "ConvConfig", "padded_conv2d", "conv_case",
           "draw_config", "NAMED", "NAMED_CONFIGS", "SWEEP_EXAMPLES", "SWEEP"]

IMPLEMENTATIONS = {
    "lax": conv.conv2d_backward,
    "im2col": im2col.conv2d_im2col_backward,
}


def _int_or_pair(pair):
    """Equal entries as an int: the sweep exercises both forms of the arguments."""
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def resolve_padding(padding, kernel, dilation):
    """A ConvConfig's padding as ((before, after), (before, after)), by torch's rules.

    Written here from the rules themselves ("same": the total (k - 1)·d split with the
    extra row after), not taken from manual.conv, so that the oracle's explicit padding
    (``padded_conv2d``) checks manual.conv's resolution of the same argument.
    """
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        totals = [(k - 1) * d for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


def _padding_argument(padding):
    """The padding as a user writes it: a string, an int, a pair or a pair of pairs."""
    if isinstance(padding, str) or all(isinstance(p, int) for p in padding):
        return padding if isinstance(padding, str) else _int_or_pair(padding)
    if all(lo == hi for lo, hi in padding):
        return _int_or_pair([lo for lo, _ in padding])
    return tuple(tuple(p) for p in padding)


@dataclasses.dataclass(frozen=True)
class ConvConfig:
    n: int
    c_in: int
    c_out: int
    size: tuple      # (H, W)
    kernel: tuple    # (k_h, k_w)
    stride: tuple = (1, 1)
    padding: object = (0, 0)  # (p_h, p_w), ((lo, hi), (lo, hi)), "same" or "valid"
    dilation: tuple = (1, 1)
    groups: int = 1
    batched: bool = True      # False: x is one (C_in, H, W) image, dy (C_out, H', W')

    @property
    def kwargs(self):
        return dict(stride=_int_or_pair(self.stride), padding=_padding_argument(self.padding),
                    dilation=_int_or_pair(self.dilation), groups=self.groups)

    @property
    def pads(self):
        return resolve_padding(self.padding, self.kernel, self.dilation)

    @property
    def sizes(self):
        return dict(N=self.n if self.batched else "-", C=f"{self.c_in}->{self.c_out}",
                    HW="x".join(map(str, self.size)), k="x".join(map(str, self.kernel)),
                    s=_int_or_pair(self.stride), p=_padding_argument(self.padding),
                    d=_int_or_pair(self.dilation), g=self.groups)

    def out(self):
        return tuple((s + lo + hi - (k - 1) * d - 1) // st + 1 for s, (lo, hi), k, d, st in
                     zip(self.size, self.pads, self.kernel, self.dilation, self.stride,
                         strict=True))

    def build(self, key, dtype):
        k = split(key, "x w b dy".split())
        (h, w), (kh, kw) = self.size, self.kernel
        batch = (self.n,) if self.batched else ()
        fan_in = self.c_in // self.groups * kh * kw
        return dict(x=host_normal(k["x"], batch + (self.c_in, h, w), dtype),
                    w=host_normal(k["w"], (self.c_out, self.c_in // self.groups, kh, kw),
                                  dtype, fan_in ** -0.5),
                    b=host_normal(k["b"], (self.c_out,), dtype),
                    dy=host_normal(k["dy"], batch + (self.c_out,) + self.out(), dtype))


def padded_conv2d(x, w, b, *, padding=0, **kwargs):
    """conv2d with its zero padding applied first (jnp.pad) and none in the convolution.

    The same function as ``manual.conv.conv2d``; it is the one the oracle differentiates.
    XLA 0.10's CPU algebraic simplifier CHECK-fails (aborting the process) while
    compiling jax.grad's own transpose of some padded, strided convolutions — e.g.
    N=3, C 4->2, 4x3 input, 2x2 kernel, stride (2, 4), padding 1, dilation (1, 2) — and
    the transpose of this formulation (a slice, and an unpadded convolution) compiles.
    The padding is resolved here by ``resolve_padding`` ("same", asymmetric pairs).
    """
    dilation = kwargs.get("dilation", 1)
    dilation = (dilation, dilation) if isinstance(dilation, int) else dilation
    if isinstance(padding, int):
        padding = (padding, padding)
    pads = resolve_padding(padding, w.shape[2:], dilation)
    x = jnp.pad(x, ((0, 0),) * (x.ndim - 2) + pads)
    return conv.conv2d(x, w, b, padding=0, **kwargs)


def conv_case(name, config, *, implementation="lax", tier="test", **kwargs):
    """A vjp_case for ``config`` whose manual side is ``implementation``'s backward.

    The oracle differentiates ``padded_conv2d`` (see there); benchmarks differentiate
    ``conv2d`` itself, since their point is the cost of jax.grad of the layer as written.
    """
    forward = conv.conv2d if tier == "bench" else padded_conv2d
    return vjp_case(
        name=name, family="conv", build=config.build, tier=tier,
        forward=functools.partial(forward, **config.kwargs),
        backward=functools.partial(IMPLEMENTATIONS[implementation], **config.kwargs),
        primals=("x", "w", "b"), sizes=config.sizes, **kwargs)


def draw_config(integer):
    """A random valid ConvConfig; ``integer(lo, hi)`` draws from [lo, hi] inclusive.

    With a numpy Generator or a hypothesis ``draw`` behind ``integer`` this is one
    sweep space: 1 to 3 groups, 1x1 to 4x4 kernels (non-square too), strides up to 4
    (larger than the kernel too), dilation up to 3; padding symmetric up to 3 (also more
    than (k - 1)·d, which makes dX's padding negative: a crop), asymmetric (each side 0
    to 3), "same" (with stride 1; odd totals put the extra row after) or "valid"; H and
    W from the smallest that fits the dilated kernel up to 5 more; 1 to 3 images, or
    one unbatched (C, H, W) image in a quarter of the draws.
    """
    groups = integer(1, 3)
    kernel = (integer(1, 4), integer(1, 4))
    stride = (integer(1, 4), integer(1, 4))
    dilation = (integer(1, 3), integer(1, 3))
    mode = integer(0, 7)  # 0-3 symmetric, 4-5 asymmetric, 6 "same", 7 "valid"
    if mode <= 3:
        padding = (integer(0, 3), integer(0, 3))
    elif mode <= 5:
        padding = ((integer(0, 3), integer(0, 3)), (integer(0, 3), integer(0, 3)))
    else:
        padding = "same" if mode == 6 else "valid"
        stride = (1, 1) if mode == 6 else stride
    pads = resolve_padding(padding, kernel, dilation)
    size = tuple(max(1, (k - 1) * d + 1 - lo - hi) + integer(0, 5)
                 for k, d, (lo, hi) in zip(kernel, dilation, pads, strict=True))
    return ConvConfig(n=integer(1, 3), c_in=groups * integer(1, 3),
                      c_out=groups * integer(1, 3), size=size, kernel=kernel,
                      stride=stride, padding=padding, dilation=dilation, groups=groups,
                      batched=integer(0, 3) != 0)


_UNBATCHED_ASYMMETRIC = ConvConfig(1, 4, 6, (7, 9), (3, 3), stride=(2, 1),
                                   padding=((0, 2), (3, 1)), groups=2, batched=False)

# (label, config, implementations, tier): the arguments one at a time, then together
# (a label may come twice, its implementations in different tiers).
NAMED = (
    ("basic", ConvConfig(2, 4, 4, (8, 8), (3, 3), padding=(1, 1)), ("lax", "im2col"), "test"),
    ("stride2-remainder", ConvConfig(2, 4, 4, (8, 8), (3, 3), stride=(2, 2), padding=(1, 1)),
     ("lax", "im2col"), "slow"),
    ("stride-gt-kernel", ConvConfig(1, 2, 3, (10, 11), (2, 2), stride=(3, 4)), ("lax",), "slow"),
    ("dilation", ConvConfig(2, 2, 3, (9, 7), (3, 3), padding=(2, 2), dilation=(2, 2)),
     ("lax", "im2col"), "slow"),
    ("groups", ConvConfig(2, 4, 6, (8, 8), (3, 2), padding=(1, 0), groups=2),
     ("lax", "im2col"), "test"),
    ("depthwise", ConvConfig(2, 3, 6, (6, 6), (3, 3), stride=(2, 2), padding=(1, 1), groups=3),
     ("lax",), "slow"),
    ("1x1-pad", ConvConfig(2, 3, 2, (5, 4), (1, 1), stride=(2, 1), padding=(1, 1)),
     ("lax", "im2col"), "slow"),
    ("all1", ConvConfig(1, 1, 1, (1, 1), (1, 1)), ("lax",), "slow"),
    ("kernel-fills-input", ConvConfig(2, 2, 3, (3, 4), (5, 4), padding=(1, 0)), ("lax",), "slow"),
    ("mixed-pairs", ConvConfig(1, 4, 2, (5, 13), (2, 3), stride=(1, 2), padding=(2, 0),
                               dilation=(1, 3), groups=2), ("lax", "im2col"), "slow"),
    ("same-even", ConvConfig(2, 3, 4, (6, 7), (2, 4), padding="same", dilation=(2, 1)),
     ("lax", "im2col"), "slow"),
    ("unbatched-asymmetric", _UNBATCHED_ASYMMETRIC, ("lax",), "test"),
    ("unbatched-asymmetric", _UNBATCHED_ASYMMETRIC, ("im2col",), "slow"),
    ("asymmetric-crop", ConvConfig(2, 2, 3, (6, 5), (1, 2), stride=(1, 2),
                                   padding=((2, 0), (0, 3))), ("lax", "im2col"), "slow"),
    ("same-dilated", ConvConfig(2, 4, 4, (5, 6), (3, 3), padding="same", dilation=(3, 2),
                                groups=4), ("lax", "im2col"), "slow"),
    ("valid-strided", ConvConfig(2, 3, 2, (9, 8), (3, 2), stride=(2, 3), padding="valid"),
     ("lax",), "slow"),
    ("unbatched-same", ConvConfig(1, 3, 2, (4, 4), (3, 3), padding="same", batched=False),
     ("lax",), "slow"),
    ("large", ConvConfig(8, 16, 32, (32, 32), (3, 3), padding=(1, 1)), ("lax", "im2col"),
     "report"),
    ("large-s2-g4", ConvConfig(8, 32, 32, (33, 33), (3, 3), stride=(2, 2), padding=(1, 1),
                               groups=4), ("lax", "im2col"), "report"),
)


NAMED_CONFIGS = {label: config for label, config, _, _ in NAMED}

# Draws of the hypothesis sweep in suite/tests/test_conv.py, per implementation: "test" in
# every `make test` (one dtype per draw, drawn with the geometry: a compile per draw is the
# cost, about 0.4 s on two cores), "slow" behind the slow marker (both dtypes per draw).
# The contract's conv2d_backward gets the larger share; im2col, the textbook second
# implementation, a quick sample there and its 200 behind the marker.
SWEEP_EXAMPLES = {"test": {"lax": 60, "im2col": 24}, "slow": {"lax": 200, "im2col": 200}}


def _name(label, implementation):
    return f"conv/{label}" if implementation == "lax" else f"conv/im2col/{label}"


for label, config, implementations, tier in NAMED:
    for implementation in implementations:
        register(conv_case(_name(label, implementation), config,
                           implementation=implementation, tier=tier))

# A fixed, reproducible sample of the sweep space for the report (the hypothesis sweep
# itself lives in the tests): 32 draws, each with both implementations.
_rng = np.random.default_rng(20240607)
SWEEP = tuple(draw_config(lambda lo, hi: int(_rng.integers(lo, hi + 1))) for _ in range(32))
for k, config in enumerate(SWEEP):
    for implementation in ("lax", "im2col"):
        register(conv_case(_name(f"sweep-{k}", implementation), config,
                           implementation=implementation, tier="slow"))

# The benchmark of the issue: N=32, 64 -> 64 channels, 32x32, 3x3, stride 1 and 2.
for s in (1, 2):
    config = ConvConfig(32, 64, 64, (32, 32), (3, 3), stride=(s, s), padding=(1, 1))
    for implementation in ("lax", "im2col"):
        register(conv_case(_name(f"bench-s{s}", implementation), config,
                           implementation=implementation, tier="bench"))
