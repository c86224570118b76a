"""A 2-D convolution layer (filtering) with stride, padding, dilation and groups, by hand.

Forward, NCHW images and OIHW kernels as in ``torch.nn.functional.conv2d``; channels
split into G groups, C_g = C_in / G inputs and O_g = C_out / G outputs per group, and
output channel o = g·O_g + o' reads only the input channels of its group g::

    Y[n,o,i,j] = b[o] + Σ_{c,a,β} X̃[n, g·C_g + c, i·s_h + a·d_h, j·s_w + β·d_w] W[o,c,a,β]

X̃ is X zero-padded by p on each side; s is the stride, d the dilation, (k_h, k_w) the
kernel. (This is a cross-correlation, as in every deep-learning library.)

Backward, given dY = dE/dY, (N, C_out, H_out, W_out). Every term of the sum links one
input pixel, one weight and one output pixel, so each gradient collects the same
terms grouped by a different factor:

    db[o]       = Σ_{n,i,j} dY[n,o,i,j]

    dW[o,c,a,β] = Σ_{n,i,j} dY[n,o,i,j] X̃[n, g·C_g + c, i·s_h + a·d_h, j·s_w + β·d_w]
                  The input correlated with dY: dY plays the kernel, its taps i spaced
                  s apart (the stride becomes the kernel's dilation) and the taps a of
                  dW, spaced d apart, become the window positions (the dilation becomes
                  the stride). X is padded by p before and p - r after: the last r
                  padded rows, lost to the stride, meet no output. Per group, the C_in
                  channels play the batch and the N images the summed features: a
                  convolution with batch_group_count = G.

    dX[n,q,u,v] = Σ_{o,a,β} dY↑[n, o, u + p_h - a·d_h, v + p_w - β·d_w] W[o,q',a,β]
                  (q = g·C_g + q', o over the O_g outputs of group g), where dY↑ is dY
                  with s - 1 zeros inserted between entries (dY↑[i·s] = dY[i]; the
                  stride becomes an input dilation). Reindexing a -> k - 1 - a turns
                  this into a correlation of dY↑ with the kernel flipped in both
                  spatial axes, padded by (k - 1)·d - p before and (k - 1)·d - p + r
                  after (the remainder r restores the rows the stride dropped; a
                  negative amount crops). The flipped kernel is transposed — in and out
                  channels swap, since dX sums over what were the outputs — per group:
                  (G·O_g, C_g, k_h, k_w) -> (O_g, G·C_g, k_h, k_w), read as IOHW with
                  feature_group_count = G.

This is "the gradient of a convolution is again a convolution": the full correlation
of dY with the rotated kernel for dX, the valid correlation of the input with dY for
dW (Bouvrie's filtering layer), generalised to stride, padding, dilation and groups.
Both are written with ``lax.conv_general_dilated`` as a forward primitive, with the
same arguments XLA's own transpose rules choose, so the compiled cost matches
JAX autodiff's.

Sources: J. Bouvrie, "Notes on Convolutional Neural Networks" (2006), filtering
layers; the convolution-backprop posts of the source notes.

All convolutions run at ``lax.Precision.HIGHEST`` so float32 stays float32 on
accelerators that would otherwise round to TF32/bfloat16 passes.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import conv
    >>> x, w, b = jnp.ones((1, 1, 3, 3)), jnp.ones((1, 1, 2, 2)), jnp.zeros(1)
    >>> conv.conv2d(x, w, b)[0, 0].tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    >>> dx, dw, db = conv.conv2d_backward(x, w, b, jnp.ones((1, 1, 2, 2)))
    >>> dx[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
"""

import jax.numpy as jnp
from jax import lax

from manual import _windows
from manual._checks import require_floats

_RANKS = {"x": 4, "w": 4, "b": 1, "dy": 4}
_NCHW = ("NCHW", "OIHW", "NCHW")
HIGHEST = lax.Precision.HIGHEST

class Geometry:
    """A convolution's static configuration as pairs, with its output size and the
    remainder lost to the stride (manual._windows), per spatial axis."""
    FIELDS = ("stride", "padding", "dilation", "groups", "kernel", "out", "remainder")

    def __init__(self, stride, padding, dilation, groups, kernel, out, remainder):
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel, self.out, self.remainder = kernel, out, remainder

    def replace(self, **changes):
        return Geometry(**{**{f: getattr(self, f) for f in self.FIELDS}, **changes})

    def __repr__(self):
        return "Geometry(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS) + ")"


def geometry(x, w, b, dy=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Validate a convolution's arguments and return its normalised Geometry.

    Raises ValueError naming the argument and the shapes it got (at trace time).
    Shared with manual.im2col, which implements the same layer.
    """
    arrays = dict(x=x, w=w, b=b) if dy is None else dict(x=x, w=w, b=b, dy=dy)
    require_floats(_RANKS, **arrays)
    stride = _windows.int_pair("stride", stride, minimum=1)
    dilation = _windows.int_pair("dilation", dilation, minimum=1)
    padding = _windows.int_pair("padding", padding, minimum=0)
    if not _windows._is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    (n, c_in, h, wd), (c_out, c_g, kh, kw) = x.shape, w.shape
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both channel counts, got x {x.shape} "
                         f"(C_in={c_in}) and w {w.shape} (C_out={c_out})")
    if c_g * groups != c_in:
        raise ValueError(f"w must have shape (C_out, C_in / groups, kh, kw) with "
                         f"C_in / groups = {c_in // groups}, got x {x.shape}, w {w.shape} "
                         f"and groups={groups}")
    if b.shape != (c_out,):
        raise ValueError(f"b must have shape (C_out,) = ({c_out},) to match w {w.shape}, "
                         f"got {b.shape}")
    if min(kh, kw, c_out) < 1:
        raise ValueError(f"w must have a non-empty kernel and C_out >= 1, got {w.shape}")
    kernel, size = (kh, kw), (h, wd)
    extent = _windows.span(kernel, dilation)
    if any(e > s + 2 * p for e, s, p in zip(extent, size, padding)):
        raise ValueError(f"the dilated kernel {extent} (w {w.shape}, dilation {dilation}) is "
                         f"larger than the padded input {tuple(s + 2 * p for s, p in zip(size, padding))} "
                         f"(x {x.shape}, padding {padding})")
    out = _windows.out_size(size, kernel, stride, padding, dilation)
    if dy is not None and dy.shape != (n, c_out) + out:
        raise ValueError(f"dy must have the shape of y, (N, C_out, H_out, W_out) = "
                         f"{(n, c_out) + out}, got {dy.shape}")
    return Geometry(stride, padding, dilation, groups, kernel, out,
                    _windows.remainder(size, kernel, stride, padding, dilation))


def conv2d(x, w, b, *, stride=1, padding=0, dilation=1, groups=1):
    """Y = X ⋆ W + b (cross-correlation), torch.nn.functional.conv2d semantics.

    Args:
      x: images, (N, C_in, H, W).
      w: kernels, (C_out, C_in / groups, k_h, k_w).
      b: bias, (C_out,).
      stride: int or pair, >= 1.
      padding: int or pair, >= 0: zeros added on each side.
      dilation: int or pair, >= 1: spacing of the kernel taps.
      groups: divides C_in and C_out.

    Returns:
      y: (N, C_out, H_out, W_out), H_out = (H + 2p - (k - 1)·d - 1) // s + 1.
    """
    g = geometry(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = lax.conv_general_dilated(
        x, w, window_strides=g.stride, padding=[(p, p) for p in g.padding],
        rhs_dilation=g.dilation, dimension_numbers=_NCHW, feature_group_count=g.groups,
        precision=HIGHEST)
    return y + b[None, :, None, None]


def conv2d_backward(x, w, b, dy, *, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of conv2d: dX (dY dilated by s, padded, ⋆ flipped transposed W),
    dW (X̃ ⋆ dY), db (Σ dY) — see the module docstring for the derivation.

    Args:
      x: images, (N, C_in, H, W).
      w: kernels, (C_out, C_in / groups, k_h, k_w).
      b: bias, (C_out,) (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dY, (N, C_out, H_out, W_out).
      stride, padding, dilation, groups: as for conv2d.

    Returns:
      (dx, dw, db) with the shapes of (x, w, b).
    """
    g = geometry(x, w, b, dy, stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
    db = dy.sum(axis=(0, 2, 3))
    dx = _input_gradient(dy, w, g)
    dw = _weight_gradient(x, dy, g)
    return dx, dw, db


def _input_gradient(dy, w, g):
    c_out, c_g, kh, kw = w.shape
    o_g = c_out // g.groups
    # per group, swap in/out channels: (G·O_g, C_g, ..) -> (O_g, G·C_g, ..) read as IOHW
    w_t = (w.reshape(g.groups, o_g, c_g, kh, kw).transpose(1, 0, 2, 3, 4)
           .reshape(o_g, g.groups * c_g, kh, kw))
    w_flipped = w_t[:, :, ::-1, ::-1]  # a -> k - 1 - a turns the sum into a correlation
    pad = [((k - 1) * d - p, (k - 1) * d - p + r)
           for k, d, p, r in zip(g.kernel, g.dilation, g.padding, g.remainder)]
    # A dY that, once dilated, is narrower than the dilated kernel is dilated and padded
    # explicitly (lax.pad), then correlated at stride 1: XLA 0.10's CPU simplifier
    # CHECK-fails (aborting the process) on some such convolutions when the dilation and
    # padding are folded into them — JAX autodiff's own transpose among them. Otherwise the
    # folded form, which is what XLA's transpose rule emits and runs at its speed.
    narrow = any((n - 1) * s + 1 < (k - 1) * d + 1
                 for n, s, k, d in zip(g.out, g.stride, g.kernel, g.dilation))
    if narrow:
        zero = jnp.zeros((), dy.dtype)
        dy = lax.pad(dy, zero, [(0, 0, 0), (0, 0, 0)]
                     + [(lo, hi, s - 1) for (lo, hi), s in zip(pad, g.stride)])
        pad, dilate = [(0, 0), (0, 0)], (1, 1)
    else:
        dilate = g.stride
    return lax.conv_general_dilated(
        dy, w_flipped, window_strides=(1, 1), padding=pad, lhs_dilation=dilate,
        rhs_dilation=g.dilation, dimension_numbers=("NCHW", "IOHW", "NCHW"),
        feature_group_count=g.groups, precision=HIGHEST)


def _weight_gradient(x, dy, g):
    # channels of x play the batch, images the features; dY is the kernel, its taps s
    # apart; the result's window positions are the taps of W, d apart
    # Rows past the last window (p - r < 0 after padding) are cropped by a slice, not by
    # negative padding: XLA 0.10's CPU simplifier aborts on some negatively padded,
    # rhs-dilated grouped convolutions (JAX autodiff's own transpose rule among them).
    crop = [max(0, r - p) for p, r in zip(g.padding, g.remainder)]
    x = x[:, :, :x.shape[2] - crop[0], :x.shape[3] - crop[1]]
    pad = [(p, max(0, p - r)) for p, r in zip(g.padding, g.remainder)]
    return lax.conv_general_dilated(
        x, dy, window_strides=g.dilation, padding=pad, rhs_dilation=g.stride,
        dimension_numbers=("CNHW", "IOHW", "CNHW"), batch_group_count=g.groups,
        precision=HIGHEST)
