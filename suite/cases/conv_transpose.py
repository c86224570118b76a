"""Transposed convolution cases: manual.conv.conv_transpose2d_backward against jax.vjp of
manual.conv.conv_transpose2d.

A family of its own, not rows of ``conv``: its forward is conv2d's dX, its backward
conv2d's forward and weight gradient in swapped roles — a different derivation with its
own parameters (output_padding, and a kernel laid out (C_in, C_out / G, k_h, k_w)), and
the conv family's rows compare its two implementations of conv2d's backward.

The oracle is jax.vjp of the transposed convolution built the textbook way,
``dilated_conv_transpose2d`` (see there for why not of manual.conv.conv_transpose2d
itself, which the forward tests and the benchmarks use); the witness is the float64
finite difference of <dY, conv_transpose2d(x, w, b)>. ``TransposeConfig`` and
``draw_config`` define the sweep space of the hypothesis sweep in
suite/tests/test_conv_transpose.py.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import conv
from suite.cases import Family, register, register_family
from suite.cases.common import normal as host_normal
from suite.cases.common import split, vjp_case

__all__ = ["TransposeConfig", "transpose_case", "draw_config", "NAMED", "NAMED_CONFIGS",
           "SWEEP", "SWEEP_EXAMPLES"]

register_family(Family(
    name="conv_transpose",
    title="Transposed convolution (conv2d's dX as a layer)",
    description="Y = A_wᵀ X + b, torch's conv_transpose2d (w: (C_in, C_out/G, k_h, k_w); "
                "stride, padding, output_padding, dilation, groups; unbatched too). The "
                "forward is conv2d's dX with X in the place of dY; so dX = A_w dY is "
                "conv2d's forward of dY with the same w (the rows of dY past its last "
                "window, output_padding of them, dropped), dW is conv2d's weight gradient "
                "with dY as the input and X as the kernel, db = Σ dY. Against jax.vjp of "
                "the hand forward; `conv_transpose/sweep-k` are fixed draws from the "
                "hypothesis sweep's space.",
))


def _int_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def _padding_argument(padding):
    if all(isinstance(p, int) for p in padding):
        return _int_or_pair(padding)
    if all(lo == hi for lo, hi in padding):
        return _int_or_pair([lo for lo, _ in padding])
    return tuple(tuple(p) for p in padding)


def _pads(padding):
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


@dataclasses.dataclass(frozen=True)
class TransposeConfig:
    n: int
    c_in: int
    c_out: int
    size: tuple                  # (H, W) of x
    kernel: tuple                # (k_h, k_w)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)      # (p_h, p_w) or ((lo, hi), (lo, hi)): cropped from the scatter
    output_padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    batched: bool = True

    @property
    def kwargs(self):
        return dict(stride=_int_or_pair(self.stride), padding=_padding_argument(self.padding),
                    output_padding=_int_or_pair(self.output_padding),
                    dilation=_int_or_pair(self.dilation), groups=self.groups)

    @property
    def sizes(self):
        return dict(N=self.n if self.batched else "-", C=f"{self.c_in}->{self.c_out}",
                    HW="x".join(map(str, self.size)), k="x".join(map(str, self.kernel)),
                    s=_int_or_pair(self.stride), p=_padding_argument(self.padding),
                    op=_int_or_pair(self.output_padding), d=_int_or_pair(self.dilation),
                    g=self.groups)

    def out(self):
        """torch's H_out = (H - 1)·s - p_lo - p_hi + (k - 1)·d + output_padding + 1."""
        return tuple((h - 1) * s - lo - hi + (k - 1) * d + op + 1
                     for h, s, (lo, hi), k, d, op in zip(
                         self.size, self.stride, _pads(self.padding), self.kernel,
                         self.dilation, self.output_padding, strict=True))

    def build(self, key, dtype):
        k = split(key, "x w b dy".split())
        (h, w), (kh, kw) = self.size, self.kernel
        batch = (self.n,) if self.batched else ()
        # each output sums about C_in·k_h·k_w / (s_h·s_w) products
        fan_in = max(1.0, self.c_in // self.groups * kh * kw / (self.stride[0] * self.stride[1]))
        return dict(x=host_normal(k["x"], batch + (self.c_in, h, w), dtype),
                    w=host_normal(k["w"], (self.c_in, self.c_out // self.groups, kh, kw),
                                  dtype, fan_in ** -0.5),
                    b=host_normal(k["b"], (self.c_out,), dtype),
                    dy=host_normal(k["dy"], batch + (self.c_out,) + self.out(), dtype))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def dilated_conv_transpose2d(x, w, b, *, stride=1, padding=0, output_padding=0, dilation=1,
                             groups=1):
    """conv_transpose2d built the textbook way (Dumoulin & Visin, 2016): s - 1 zeros
    inserted between the input pixels, the result padded by (k - 1)·d - p_lo before and
    (k - 1)·d - p_hi + output_padding after (a negative amount crops), then a stride-1
    conv2d with the kernel flipped and its in/out channels swapped per group.

    The same function as ``manual.conv.conv_transpose2d``; it is the one the oracle
    differentiates. That one folds the zeros into the convolution (an input dilation),
    as ``lax.conv_transpose`` does, and XLA 0.10's CPU algebraic simplifier CHECK-fails
    (aborting the process) compiling JAX's own transpose of some such grouped
    convolutions — e.g. x (3, 9, 4, 3), w (9, 2, 2, 4), groups 3, stride (4, 2),
    padding (1, 3), output_padding (3, 0) — whatever writes the forward; the transpose of
    this formulation (a strided slice, and an undilated convolution) compiles.
    """
    stride, dilation, op = _pair(stride), _pair(dilation), _pair(output_padding)
    pads = _pads(_pair(padding) if isinstance(padding, int) or isinstance(padding[0], int)
                 else padding)
    c_in, o_g, kh, kw = w.shape
    c_g = c_in // groups
    w_conv = (w.reshape(groups, c_g, o_g, kh, kw).transpose(0, 2, 1, 3, 4)
              .reshape(groups * o_g, c_g, kh, kw)[:, :, ::-1, ::-1])
    config = [(0, 0, 0)] * (x.ndim - 2) + [
        ((k - 1) * d - lo, (k - 1) * d - hi + o, s - 1)
        for k, d, (lo, hi), o, s in zip((kh, kw), dilation, pads, op, stride, strict=True)]
    x_up = lax.pad(x, jnp.zeros((), x.dtype), config)
    return conv.conv2d(x_up, w_conv, b, dilation=dilation, groups=groups)


def transpose_case(name, config, *, tier="test", **kwargs):
    """A vjp_case of conv_transpose2d for ``config``: the oracle is jax.vjp of
    ``dilated_conv_transpose2d`` (benchmarks: of manual.conv.conv_transpose2d itself,
    since their point is the cost of jax.grad of the layer as written), the manual side
    conv_transpose2d_backward."""
    forward = conv.conv_transpose2d if tier == "bench" else dilated_conv_transpose2d
    return vjp_case(
        name=name, family="conv_transpose", build=config.build, tier=tier,
        forward=functools.partial(forward, **config.kwargs),
        backward=functools.partial(conv.conv_transpose2d_backward, **config.kwargs),
        primals=("x", "w", "b"), sizes=config.sizes, **kwargs)


def draw_config(integer):
    """A random valid TransposeConfig; ``integer(lo, hi)`` draws from [lo, hi] inclusive.

    1 to 3 groups, 1x1 to 4x4 kernels, strides up to 4, dilation up to 3, output_padding
    anywhere below max(stride, dilation) per axis (so also >= stride where the dilation
    allows it, torch's second case), padding 0 to 3 per axis, asymmetric in a quarter of
    the draws (more than (k - 1)·d too: then the crop reaches into the scatter's
    interior), H and W from the smallest with a non-empty output up to 4 more; 1 to 3
    images, or one unbatched (C, H, W) image in a quarter of the draws.
    """
    groups = integer(1, 3)
    kernel = (integer(1, 4), integer(1, 4))
    stride = (integer(1, 4), integer(1, 4))
    dilation = (integer(1, 3), integer(1, 3))
    output_padding = tuple(integer(0, max(s, d) - 1)
                           for s, d in zip(stride, dilation, strict=True))
    if integer(0, 3) == 0:
        padding = ((integer(0, 3), integer(0, 3)), (integer(0, 3), integer(0, 3)))
    else:
        padding = (integer(0, 3), integer(0, 3))
    size = []
    for s, (lo, hi), k, d, op in zip(stride, _pads(padding), kernel, dilation,
                                     output_padding, strict=True):
        smallest = 1  # the smallest H with (H - 1)·s - lo - hi + (k - 1)·d + op + 1 >= 1
        while (smallest - 1) * s - lo - hi + (k - 1) * d + op < 0:
            smallest += 1
        size.append(smallest + integer(0, 4))
    return TransposeConfig(n=integer(1, 3), c_in=groups * integer(1, 3),
                           c_out=groups * integer(1, 3), size=tuple(size), kernel=kernel,
                           stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups, batched=integer(0, 3) != 0)


# (label, config, tier): the arguments one at a time, then together.
NAMED = (
    ("basic", TransposeConfig(2, 3, 4, (5, 5), (3, 3)), "slow"),
    ("decoder-s2", TransposeConfig(2, 4, 3, (4, 5), (4, 4), stride=(2, 2), padding=(1, 1)),
     "slow"),
    ("output-padding", TransposeConfig(2, 3, 2, (4, 4), (3, 3), stride=(2, 2), padding=(1, 1),
                                       output_padding=(1, 1)), "slow"),
    ("groups-unbatched", TransposeConfig(1, 4, 6, (3, 4), (2, 3), stride=(2, 1),
                                         padding=(1, 0), output_padding=(1, 0), groups=2,
                                         batched=False), "test"),
    ("output-padding-dilation", TransposeConfig(1, 2, 2, (3, 4), (2, 2), stride=(1, 2),
                                                output_padding=(1, 1), dilation=(2, 2)),
     "slow"),
    ("stride-gt-kernel", TransposeConfig(2, 2, 3, (3, 4), (2, 2), stride=(3, 4)), "slow"),
    ("crop-past-kernel", TransposeConfig(1, 3, 3, (6, 6), (2, 1), stride=(2, 3),
                                         padding=(2, 1)), "slow"),
    ("asymmetric", TransposeConfig(2, 2, 4, (4, 3), (3, 2), stride=(2, 2),
                                   padding=((0, 2), (1, 0)), output_padding=(1, 0)), "slow"),
    ("depthwise", TransposeConfig(2, 3, 3, (5, 5), (3, 3), stride=(2, 2), padding=(1, 1),
                                  output_padding=(1, 1), groups=3), "slow"),
    ("dilated", TransposeConfig(2, 2, 3, (4, 4), (3, 3), padding=(2, 1), dilation=(2, 3)),
     "slow"),
    ("all1", TransposeConfig(1, 1, 1, (1, 1), (1, 1)), "slow"),
    ("large-s2", TransposeConfig(8, 32, 16, (16, 16), (4, 4), stride=(2, 2), padding=(1, 1)),
     "report"),
)

NAMED_CONFIGS = {label: config for label, config, _ in NAMED}

# Draws of the hypothesis sweep in suite/tests/test_conv_transpose.py, each in float32 and
# float64: "test" in every `make test`, "slow" behind the slow marker.
SWEEP_EXAMPLES = {"test": 8, "slow": 300}

for label, config, tier in NAMED:
    register(transpose_case(f"conv_transpose/{label}", config, tier=tier))

# A fixed, reproducible sample of the sweep space for the report.
_rng = np.random.default_rng(20240615)
SWEEP = tuple(draw_config(lambda lo, hi: int(_rng.integers(lo, hi + 1))) for _ in range(24))
for k, config in enumerate(SWEEP):
    register(transpose_case(f"conv_transpose/sweep-{k}", config, tier="slow"))

# The decoder benchmark of issue 15: N=16, 128 -> 64 channels, 32x32 -> 64x64, stride 2,
# as a DCGAN generator (4x4 kernel, padding 1) and a U-Net decoder (3x3 kernel,
# padding 1, output_padding 1).
for label, config in (
        ("bench-k4-s2", TransposeConfig(16, 128, 64, (32, 32), (4, 4), stride=(2, 2),
                                        padding=(1, 1))),
        ("bench-k3-s2-op1", TransposeConfig(16, 128, 64, (32, 32), (3, 3), stride=(2, 2),
                                            padding=(1, 1), output_padding=(1, 1)))):
    register(transpose_case(f"conv_transpose/{label}", config, tier="bench"))
