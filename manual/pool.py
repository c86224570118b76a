"""Max and average pooling (subsampling), by hand, with every option of
``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` but ``return_indices``: window,
stride, padding, dilation (max), ceil_mode, count_include_pad and divisor_override
(avg), and unbatched (C, H, W) input.

**Forward**, NCHW, windows of (k_h, k_w) taps with dilation d (max pooling only; 1 for
average pooling), moved by stride s (None: the window) over the input padded by p on each
side, 0 <= p <= k/2 (torch's bound, on the undilated window). Per axis, with
e = (k - 1)·d + 1 the span of a window::

    max:  Y[n,c,i,j] = max_{a,β} X̃[n, c, i·s_h + a·d_h, j·s_w + β·d_w]     X̃ padded with -inf
    avg:  Y[n,c,i,j] = 1/D[i,j] Σ_{a,β} X̃[n, c, i·s_h + a, j·s_w + β]       X̃ padded with 0

    H_out = ⌊(H + 2p - e) / s⌋ + 1                    (ceil_mode=False)
    H_out = ⌈(H + 2p - e) / s⌉ + 1, less one if window H_out - 1 would start at or
            after H + p, in the right padding          (ceil_mode=True, torch's rule)

(in padded coordinates window i starts at row i·s).

**ceil_mode.** The ceiling keeps a last, partial window that the floor drops: it starts
inside the input or the left padding (torch drops one that would start in the right
padding, so each undilated window holds a real row) and hangs up to s - 1 rows past the
padding.
Those overhanging taps read nothing: -inf for max, 0 for avg, i.e. X̃ is padded by
p + ex after, ex = max(0, (H_out - 1)·s + e - (H + 2p)); they get no gradient. The
window's divisor counts only what it covers (below). The backward is unchanged but for
that extra pad, and the crop of dX̃ that drops it.

**Divisor D of average pooling**, a per-window map, separable, D[i,j] = D_h[i]·D_w[j],
each computed once from the static shapes (in padded coordinates, window i covers rows
[i·s, i·s + k)):

    count_include_pad=True (default):  D_h[i] = min(i·s + k, H + 2p) - i·s
        the padding counts, the ceil_mode overhang past it does not (k unless ceil_mode)
    count_include_pad=False:           D_h[i] = min(i·s + k, H + p) - max(i·s, p)
        only the real rows of the window
    divisor_override=D:                D[i,j] = D for every window (any nonzero int)

**Backward**, given dY = dE/dY (N, C, H_out, W_out). Each output depends on the pixels of
its own window only, so each pixel collects from every window it lies in:

    max:  dX̃[n,c,u,v] = Σ_{i,j} dY[n,c,i,j] · [ (u,v) is the argmax of window (i,j) ]
          The max is locally the identity on its argmax and constant in the others
          (Bouvrie's subsampling layer with max instead of mean: the "switches"). With
          dilation, the window's taps are d apart: the argmax runs over the taps
          (i·s + a·d, j·s + β·d) only, and the scatter puts dY back at that tap. The
          first argmax is the last tap that beat the running maximum strictly, so a
          forward sweep over the taps records which did, and a backward sweep hands
          dY to the last of them (tap 0 if none did).
    avg:  dX̃[n,c,u,v] = Σ_{i,j : (u,v) in window (i,j)} dY[n,c,i,j] / D[i,j]
          The transpose of the window sum, scaled by the same per-window divisor: every
          pixel of a window gets an equal share of the window's gradient.

and dX is dX̃ without its padding (p before, p + ex after): gradient sent to padding or
to the ceil_mode overhang is dropped. Both scatter-adds are col2im, one tap at a time
(manual.windows.unwindow).

Tie convention (max): when several pixels of a window share the maximum, the whole
dY[n,c,i,j] goes to the FIRST of them in row-major order of the window (smallest a,
then smallest β) — exactly where JAX's gradient of ``lax.reduce_window(x, -inf, lax.max,
...)`` sends it (XLA's select-and-scatter keeps the current pick unless a later tap
is strictly greater). It is not split between the tied pixels.

A dilated max window can hold no real pixel at all (its taps stepping over the input
into the padding on both sides, e.g. H = 2, k = 2, p = 1, d = 3). As torch, its output is
-inf and it sends no gradient (its first tap, a pad, "wins" the tie of -infs).

Dilated max pooling is written with the window's taps (strided slices) and a running
maximum that a later tap replaces only when strictly greater (``jnp.where``): JAX
implements no VJP for ``lax.reduce_window`` with window dilation, and this form keeps
JAX's gradient of the forward available with the same tie convention (the gradient of a
``where`` goes to the tap it kept). Undilated pooling is ``lax.reduce_window``.

Sources: J. Bouvrie, "Notes on Convolutional Neural Networks" (2006), subsampling
layers; the convolution-backprop posts of the source notes; PyTorch's pooling shape and
divisor rules (aten/src/ATen/native/Pool.h, AveragePool2d.cpp).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import pool
    >>> x = jnp.arange(1.0, 6.0).reshape(1, 1, 5)  # unbatched (C, H, W): one row 1..5
    >>> pool.avg_pool2d(x, window=(1, 2), ceil_mode=True).tolist()  # last window: 5 / 1
    [[[1.5, 3.5, 5.0]]]
    >>> pool.avg_pool2d(x, window=(1, 2), padding=(0, 1), count_include_pad=False).tolist()
    [[[1.0, 2.5, 4.5]]]
    >>> pool.max_pool2d_backward(x, jnp.ones((1, 1, 2)), window=(1, 2), stride=1,
    ...                          dilation=(1, 3)).tolist()  # taps 3 apart: (1, 4), (2, 5)
    [[[0.0, 0.0, 0.0, 1.0, 1.0]]]
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import windows
from manual._checks import require_float, require_floats
from manual.windows import Array, ArrayLike, IntOrPair, Pair

__all__ = ["PoolGeometry", "pool_geometry", "divisor", "max_pool2d", "avg_pool2d",
           "max_pool2d_backward", "avg_pool2d_backward"]


class PoolGeometry:
    """A pooling layer's static configuration, per spatial axis.

    Attributes:
      window, stride, padding, dilation: pairs (padding p on both sides).
      ceil_mode: bool.
      size: (H, W) of the input; out: (H_out, W_out).
      extra: the ceil_mode overhang ex, padded after the right padding.
    """
    FIELDS = ("window", "stride", "padding", "dilation", "ceil_mode", "size", "out", "extra")

    def __init__(self, window: Pair, stride: Pair, padding: Pair, dilation: Pair,
                 ceil_mode: bool, size: Pair, out: Pair, extra: Pair) -> None:
        self.window, self.stride, self.padding, self.dilation = window, stride, padding, dilation
        self.ceil_mode, self.size, self.out, self.extra = ceil_mode, size, out, extra

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((before, after), (before, after)) padding of X̃, the overhang included."""
        return tuple((p, p + ex) for p, ex in zip(self.padding, self.extra, strict=True))

    @property
    def padded(self) -> Pair:
        """The spatial size of X̃."""
        return tuple(h + lo + hi for h, (lo, hi) in zip(self.size, self.pads, strict=True))

    def __repr__(self):
        return ("PoolGeometry(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS)
                + ")")


def _torch_out(h, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape (aten/src/ATen/native/Pool.h), one axis."""
    e = (k - 1) * d + 1
    out = (h + 2 * p - e + (s - 1 if ceil_mode else 0)) // s + 1  # // floors, as div_rtn
    if ceil_mode and (out - 1) * s >= h + p:  # the last window would start in the right
        out -= 1                              # padding: torch drops it
    return out


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def pool_geometry(x: ArrayLike, dy: ArrayLike | None = None, *, window: IntOrPair,
                  stride: IntOrPair | None = None, padding: IntOrPair = 0,
                  dilation: IntOrPair = 1, ceil_mode: bool = False) -> PoolGeometry:
    """Validate a pooling layer's arguments and return its PoolGeometry.

    Raises ValueError naming the argument and the shapes it got (at trace time).
    """
    require_float("x", x)
    if np.ndim(x) not in (3, 4):
        raise ValueError(f"x must have rank 4 (N, C, H, W) or 3 (C, H, W, unbatched), got "
                         f"shape {tuple(np.shape(x))}")
    arrays = dict(x=x) if dy is None else dict(x=x, dy=dy)
    require_floats({"x": np.ndim(x), "dy": np.ndim(x)}, **arrays)
    window = windows.int_pair("window", window, minimum=1)
    empty = isinstance(stride, (tuple, list)) and len(stride) == 0  # torch: () is the window
    stride = window if stride is None or empty else windows.int_pair("stride", stride, minimum=1)
    padding = windows.int_pair("padding", padding, minimum=0)
    dilation = windows.int_pair("dilation", dilation, minimum=1)
    ceil_mode = _flag("ceil_mode", ceil_mode)
    if any(2 * p > k for p, k in zip(padding, window, strict=True)):
        raise ValueError(f"padding {padding} must be at most half the window {window} "
                         f"(as in torch), for x {x.shape}")
    size = tuple(np.shape(x)[-2:])
    out = tuple(_torch_out(h, k, s, p, d, ceil_mode) for h, k, s, p, d
                in zip(size, window, stride, padding, dilation, strict=True))
    if min(out) < 1:
        spans = windows.span(window, dilation)
        what = f"window {window}" + (f" with dilation {dilation} (span {spans})"
                                     if dilation != (1, 1) else "")
        slack = " even with ceil_mode's overhang of up to stride - 1" if ceil_mode else ""
        raise ValueError(f"{what} is larger than the padded input "
                         f"{tuple(h + 2 * p for h, p in zip(size, padding, strict=True))}"
                         f"{slack} (x {x.shape}, padding {padding})")
    if dy is not None and dy.shape != x.shape[:-2] + out:
        dropped = [i for i, (h, k, s, p, d) in enumerate(
            zip(size, window, stride, padding, dilation, strict=True))
            if ceil_mode and out[i] < (h + 2 * p - (k - 1) * d - 1 + s - 1) // s + 1]
        why = (f"; with ceil_mode the last window must start inside the input or the left "
               f"padding (torch), so the window that would start in the right padding of "
               f"axis {', '.join(str(2 + i) for i in dropped)} is not an output"
               if dropped else "")
        raise ValueError(f"dy must have the shape of y, {x.shape[:-2] + out}, got "
                         f"{dy.shape}{why}")
    extra = tuple(max(0, (o - 1) * s + e - (h + 2 * p)) for o, s, e, h, p in
                  zip(out, stride, windows.span(window, dilation), size, padding, strict=True))
    return PoolGeometry(window, stride, padding, dilation, ceil_mode, size, out, extra)


def divisor(g: PoolGeometry, *, count_include_pad: bool = True,
            divisor_override: int | None = None) -> float | np.ndarray:
    """Average pooling's divisor: one number, or the (H_out, W_out) map D[i, j].

    See the module docstring; a map that is one number everywhere is returned as it
    (k_h·k_w in the default configuration, as before these options existed).
    """
    count_include_pad = _flag("count_include_pad", count_include_pad)
    if divisor_override is not None:
        if not windows.is_int(divisor_override) or divisor_override == 0:
            raise ValueError(f"divisor_override must be None or a nonzero int (as torch), "
                             f"got {divisor_override!r}")
        return int(divisor_override)
    per_axis = []
    for o, s, k, h, p in zip(g.out, g.stride, g.window, g.size, g.padding, strict=True):
        start = np.arange(o) * s  # window i covers padded rows [i·s, i·s + k)
        if count_include_pad:
            per_axis.append(np.minimum(start + k, h + 2 * p) - start)
        else:
            per_axis.append(np.minimum(start + k, h + p) - np.maximum(start, p))
    d = np.outer(*per_axis)
    return int(d.flat[0]) if np.all(d == d.flat[0]) else d


def _padded(x, g, value):
    return jnp.pad(x, ((0, 0), (0, 0)) + g.pads, constant_values=value)


def _crop(dx_pad, g):
    (top, _), (left, _) = g.pads
    (h, w) = g.size
    return dx_pad[:, :, top:top + h, left:left + w]


def _scale(y, d):
    """y / D, with the map D broadcast explicitly and in y's dtype."""
    if np.ndim(d) == 0:
        return y / d
    return y / jnp.asarray(d, y.dtype)[None, None]


def _routes(taps, dy):
    """dY routed to each window's first maximal tap: one array per tap, dY or 0.

    The first maximum in row-major tap order is the last tap that beat the running
    maximum strictly. A forward sweep records, per tap, whether it did
    (beat_k = tap_k > max(tap_0..tap_{k-1})); a backward sweep hands dY to the last tap
    that did, and to tap 0 if none did.
    """
    best, beat = taps[0], []
    for tap in taps[1:]:
        beat.append(tap > best)
        best = jnp.where(beat[-1], tap, best)
    zero = jnp.zeros_like(dy)
    routed, rest = [None] * len(taps), dy  # rest: dY not yet handed to a later tap
    for k in range(len(taps) - 1, 0, -1):
        routed[k] = jnp.where(beat[k - 1], rest, zero)
        rest = jnp.where(beat[k - 1], zero, rest)
    routed[0] = rest
    return routed


def max_pool2d(x: ArrayLike, *, window: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, dilation: IntOrPair = 1,
               ceil_mode: bool = False) -> Array:
    """Y = max over each window of X padded with -inf (torch.nn.functional.max_pool2d).

    Args:
      x: images, (N, C, H, W), or one image (C, H, W).
      window: int or pair, the window (k_h, k_w) (each int-or-pair argument takes a 1-tuple).
      stride: int, 1-tuple or pair, >= 1; None or () means the window (as torch).
      padding: int or pair, 0 <= p <= k/2.
      dilation: int or pair, >= 1: spacing of the window's taps.
      ceil_mode: keep a last partial window (torch's rule; see the module docstring).

    Returns:
      y: (N, C, H_out, W_out) (unbatched: (C, H_out, W_out)).
    """
    g = pool_geometry(x, window=window, stride=stride, padding=padding, dilation=dilation,
                      ceil_mode=ceil_mode)
    x4 = windows.batched(x)
    if g.dilation == (1, 1):
        y = lax.reduce_window(x4, np.asarray(-np.inf, x4.dtype)[()], lax.max,
                              (1, 1) + g.window, (1, 1) + g.stride, ((0, 0), (0, 0)) + g.pads)
    else:  # the taps and a running maximum (see the module docstring)
        taps = windows.windows(_padded(x4, g, -np.inf), g.window, g.stride, g.dilation,
                               g.out)
        y = taps[0]
        for tap in taps[1:]:
            y = jnp.where(tap > y, tap, y)  # a later tap replaces only a strictly smaller
    return windows.unbatched_like(y, x)


def avg_pool2d(x: ArrayLike, *, window: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> Array:
    """Y = the sum over each window of X padded with zeros, divided by the window's
    divisor D (torch.nn.functional.avg_pool2d).

    Args:
      x: images, (N, C, H, W), or one image (C, H, W).
      window, stride, padding, ceil_mode: as for max_pool2d.
      count_include_pad: the padding counts in the divisor (True) or not.
      divisor_override: None, or a nonzero int used as every window's divisor.

    Returns:
      y: (N, C, H_out, W_out) (unbatched: (C, H_out, W_out)).
    """
    g = pool_geometry(x, window=window, stride=stride, padding=padding, ceil_mode=ceil_mode)
    d = divisor(g, count_include_pad=count_include_pad, divisor_override=divisor_override)
    x4 = windows.batched(x)
    total = lax.reduce_window(x4, np.asarray(0, x4.dtype)[()], lax.add, (1, 1) + g.window,
                              (1, 1) + g.stride, ((0, 0), (0, 0)) + g.pads)
    return windows.unbatched_like(_scale(total, d), x)


def max_pool2d_backward(x: ArrayLike, dy: ArrayLike, *, window: IntOrPair,
                        stride: IntOrPair | None = None, padding: IntOrPair = 0,
                        dilation: IntOrPair = 1, ceil_mode: bool = False) -> Array:
    """dX: each dY entry routed to the first argmax of its window (see the module doc).

    Args:
      x: images, (N, C, H, W) or (C, H, W).
      dy: upstream gradient dE/dY, the shape of y.
      window, stride, padding, dilation, ceil_mode: as for max_pool2d.

    Returns:
      dx, the shape of x.
    """
    g = pool_geometry(x, dy, window=window, stride=stride, padding=padding,
                      dilation=dilation, ceil_mode=ceil_mode)
    x4, dy4 = windows.batched(x), windows.batched(dy)
    taps = windows.windows(_padded(x4, g, -np.inf), g.window, g.stride, g.dilation, g.out)
    dx_pad = windows.unwindow(_routes(taps, dy4), g.padded, g.window, g.stride, g.dilation)
    return windows.unbatched_like(_crop(dx_pad, g), x)


def avg_pool2d_backward(x: ArrayLike, dy: ArrayLike, *, window: IntOrPair,
                        stride: IntOrPair | None = None, padding: IntOrPair = 0,
                        ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: int | None = None) -> Array:
    """dX: dY / D spread over every pixel of its window (see the module doc).

    Args:
      x: images, (N, C, H, W) or (C, H, W).
      dy: upstream gradient dE/dY, the shape of y.
      window, stride, padding, ceil_mode, count_include_pad, divisor_override: as for
        avg_pool2d.

    Returns:
      dx, the shape of x.
    """
    g = pool_geometry(x, dy, window=window, stride=stride, padding=padding,
                      ceil_mode=ceil_mode)
    d = divisor(g, count_include_pad=count_include_pad, divisor_override=divisor_override)
    share = _scale(windows.batched(dy), d)
    taps = [share] * (g.window[0] * g.window[1])
    dx_pad = windows.unwindow(taps, g.padded, g.window, g.stride, (1, 1))
    return windows.unbatched_like(_crop(dx_pad, g), x)
