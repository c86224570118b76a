"""2-D convolution (filtering) and transposed convolution layers, by hand: stride, padding
(symmetric, asymmetric, "same", "valid"), dilation, groups, output_padding.

**Forward.** NCHW images and OIHW kernels as in ``torch.nn.functional.conv2d``; channels
split into G groups, C_g = C_in / G inputs and O_g = C_out / G outputs per group, and
output channel o = g·O_g + o' reads only the input channels of its group g::

    Y[n,o,i,j] = b[o] + Σ_{c,a,β} X̃[n, g·C_g + c, i·s_h + a·d_h, j·s_w + β·d_w] W[o,c,a,β]

X̃ is X zero-padded by p_lo rows before and p_hi after (likewise columns); s is the
stride, d the dilation, (k_h, k_w) the kernel, e = (k - 1)·d + 1 the span of a dilated
window. (This is a cross-correlation, as in every deep-learning library.) Per axis,
H_out = (H + p_lo + p_hi - e) // s + 1, and the last r = (H + p_lo + p_hi - e) mod s
padded rows meet no window: the remainder lost to the stride.

Padding: an int (every side), a pair (p_h, p_w) (symmetric), a pair of (before, after)
pairs, "valid" (no padding) or "same" (stride 1 only, as torch: the total (k - 1)·d is
split as p_lo = ⌊(k - 1)·d / 2⌋, p_hi = ⌈(k - 1)·d / 2⌉, the extra row after, so
H_out = H). "same" is nothing but an asymmetric padding, so none of the formulas below
needs a case of its own.

**Backward**, given dY = dE/dY, (N, C_out, H_out, W_out). Every term of the sum links one
input pixel, one weight and one output pixel, so each gradient collects the same terms
grouped by a different factor:

    db[o]       = Σ_{n,i,j} dY[n,o,i,j]

    dW[o,c,a,β] = Σ_{n,i,j} dY[n,o,i,j] X̃[n, g·C_g + c, i·s_h + a·d_h, j·s_w + β·d_w]
                  The input correlated with dY: dY plays the kernel, its taps i spaced
                  s apart (the stride becomes the kernel's dilation) and the taps a of
                  dW, spaced d apart, become the window positions (the dilation becomes
                  the stride). X is padded by p_lo before and p_hi - r after: the last
                  r padded rows, lost to the stride, meet no output (where r > p_hi
                  the cut reaches into X itself: a crop). Per group, the C_in channels
                  play the batch and the N images the summed features: a convolution
                  with batch_group_count = G.

    dX[n,q,u,v] = Σ_{o,a,β} dY↑[n, o, u + p_lo - a·d_h, v + p_lo' - β·d_w] W[o,q',a,β]
                  (q = g·C_g + q', o over the O_g outputs of group g), where dY↑ is dY
                  with s - 1 zeros inserted between entries (dY↑[i·s] = dY[i]; the
                  stride becomes an input dilation). Reindexing a -> k - 1 - a turns
                  this into a correlation of dY↑ with the kernel flipped in both
                  spatial axes, padded by (k - 1)·d - p_lo before and
                  (k - 1)·d - p_hi + r after (the remainder r restores the rows the
                  stride dropped; a negative amount crops). This is dX̃ already cropped
                  to X: asymmetric padding changes only the two crops, p_lo at the
                  start and p_hi at the end. The flipped kernel is transposed (in and
                  out channels swap, since dX sums over what were the outputs) per
                  group: (G·O_g, C_g, k_h, k_w) -> (O_g, G·C_g, k_h, k_w), read as
                  IOHW with feature_group_count = G.

This is "the gradient of a convolution is again a convolution": the full correlation of
dY with the rotated kernel for dX, the valid correlation of the input with dY for dW
(Bouvrie's filtering layer), generalised to stride, padding, dilation and groups.

**Transposed convolution** (``torch.nn.functional.conv_transpose2d``; w is
(C_in, C_out / G, k_h, k_w)). Call A_w the linear map X -> X ⋆ W of conv2d (no bias)
for a kernel W of shape (C_out', C_in' / G, k_h, k_w). The transposed convolution is
its adjoint, A_wᵀ, applied to x, with w read as that kernel (C_out' = C_in, the
transposed layer's input channels; C_in' = C_out)::

    Y = A_wᵀ X + b,      Y[n,o,u,v] = b[o] + Σ_{c,i,j,a,β} X[n,c,i,j] W[c,o',a,β]
                         over i·s_h + a·d_h = u + p_lo, j·s_w + β·d_w = v + p_lo'

each input pixel scattered through the kernel, i·s + a·d rows down, and the scatter
cropped by p_lo before and p_hi after. So **its forward is conv2d's dX**, word for word:
``input_gradient`` with dY := X, for the conv2d geometry whose input has the transposed
layer's output size H_out = (H - 1)·s - p_lo - p_hi + (k - 1)·d + output_padding + 1.
In that geometry the padded rows past the last window are exactly r = output_padding:
output_padding picks which of the s input sizes that the floor in conv2d's H_out folds
together is meant (torch requires output_padding < s or < d per axis; with s <= op < d
the conv2d would see floor(op / s) extra windows, whose dY rows are zero).

Its backward is the adjoint of the adjoint, and of the bilinear form:

    dX = A_w dY          conv2d's forward, with the same w, stride, padding, dilation and
                         groups, of dY (no bias), over dY without the r = output_padding
                         rows past its last window (those met no input pixel):
                         dX[n,c,i,j] = Σ_{o',a,β} dỸ[n, g·O_g' + o', i·s_h + a·d_h,
                         j·s_w + β·d_w] W[c,o',a,β]
    dW[c,o',a,β] = Σ_{n,i,j} X[n,c,i,j] dỸ[n, g·O_g' + o', i·s_h + a·d_h, j·s_w + β·d_w]
                         conv2d's dW with the roles swapped: dY plays conv2d's input
                         (padded p_lo before, p_hi - r after) and X plays conv2d's dY
                         (the kernel, its taps s apart): ``weight_gradient(dY, X)``
    db[o] = Σ_{n,u,v} dY[n,o,u,v]

All three are the conv2d routines of this module evaluated with the arguments in the
roles the correspondence assigns; nothing is differentiated, and conv2d_backward is
not called.

**Unbatched input.** Every function takes (C, H, W) for (N, C, H, W) (and dY likewise)
and returns unbatched results: the formulas above with N = 1.

Everything is written with ``lax.conv_general_dilated`` as a forward primitive, with the
arguments XLA's own transpose rules choose, so the compiled cost matches JAX autodiff's.
All convolutions run at ``lax.Precision.HIGHEST`` so float32 stays float32 on
accelerators that would otherwise round to TF32/bfloat16 passes.

Sources: J. Bouvrie, "Notes on Convolutional Neural Networks" (2006), filtering layers;
V. Dumoulin, F. Visin, "A guide to convolution arithmetic for deep learning" (2016),
transposed convolution as the gradient of a convolution; the convolution-backprop posts
of the source notes.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import conv
    >>> x, w, b = jnp.ones((1, 1, 3, 3)), jnp.ones((1, 1, 2, 2)), jnp.zeros(1)
    >>> conv.conv2d(x, w, b)[0, 0].tolist()
    [[4.0, 4.0], [4.0, 4.0]]
    >>> dx, dw, db = conv.conv2d_backward(x, w, b, jnp.ones((1, 1, 2, 2)))
    >>> dx[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    >>> conv.conv2d(x[0], w, b, padding="same").shape  # unbatched, H_out = H
    (1, 3, 3)
    >>> conv.conv_transpose2d(jnp.ones((1, 1, 2, 2)), w, b)[0, 0].tolist()  # = dx above
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
"""

import numpy as np
from jax import lax

from manual import windows
from manual._checks import require_float, require_floats
from manual.windows import Array, ArrayLike, IntOrPair, Padding, PadPairs, Pair

__all__ = ["HIGHEST", "Geometry", "geometry", "transpose_geometry", "conv2d",
           "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
           "correlate", "input_gradient", "weight_gradient"]

_NCHW = ("NCHW", "OIHW", "NCHW")
HIGHEST = lax.Precision.HIGHEST


class Geometry:
    """A convolution's static configuration, per spatial axis.

    Attributes:
      stride, dilation, kernel: pairs.
      padding: ((before, after), (before, after)).
      groups: int.
      out: the correlation's output size (the spatial shape of conv2d's y and dy).
      remainder: padded rows and columns past the last window (met by no output).
    """
    FIELDS = ("stride", "padding", "dilation", "groups", "kernel", "out", "remainder")

    def __init__(self, stride: Pair, padding: PadPairs, dilation: Pair, groups: int,
                 kernel: Pair, out: Pair, remainder: Pair) -> None:
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel, self.out, self.remainder = kernel, out, remainder

    def replace(self, **changes) -> "Geometry":
        """A copy with the named fields changed."""
        return Geometry(**{**{f: getattr(self, f) for f in self.FIELDS}, **changes})

    def __repr__(self):
        return "Geometry(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.FIELDS) + ")"


def _describe(x):
    return f"shape {tuple(np.shape(x))}"


def _check_arrays(x, w, b, dy):
    """Floats of one dtype; x is (N, C, H, W) or unbatched (C, H, W), dy of x's rank."""
    require_float("x", x)
    if np.ndim(x) not in (3, 4):
        raise ValueError(f"x must have rank 4 (N, C, H, W) or 3 (C, H, W, unbatched), got "
                         f"{_describe(x)}")
    arrays = dict(x=x, w=w, b=b) if dy is None else dict(x=x, w=w, b=b, dy=dy)
    require_floats(dict(x=np.ndim(x), w=4, b=1, dy=np.ndim(x)), **arrays)
    return np.shape(x) if np.ndim(x) == 4 else (1,) + np.shape(x)


def _groups(groups):
    if not windows.is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return int(groups)


def _conv_padding(padding, kernel, stride, dilation):
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (as torch: the output "
                                 f"size would otherwise depend on the input's), got "
                                 f"stride {stride}")
            total = [(k - 1) * d for k, d in zip(kernel, dilation, strict=True)]
            return tuple((t // 2, t - t // 2) for t in total)  # the extra row after
        raise ValueError(f"padding must be an int, a pair, a pair of (before, after) "
                         f"pairs, 'same' or 'valid', got {padding!r}")
    return windows.pad_pairs("padding", padding)


def geometry(x: ArrayLike, w: ArrayLike, b: ArrayLike, dy: ArrayLike | None = None, *,
             stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
             groups: int = 1) -> Geometry:
    """Validate conv2d's arguments and return its normalised Geometry.

    Raises ValueError naming the argument and the shapes it got (at trace time).
    Shared with manual.im2col, which implements the same layer.
    """
    n, c_in, h, wd = _check_arrays(x, w, b, dy)
    stride = windows.int_pair("stride", stride, minimum=1)
    dilation = windows.int_pair("dilation", dilation, minimum=1)
    groups = _groups(groups)
    c_out, c_g, kh, kw = w.shape
    kernel, size = (kh, kw), (h, wd)
    padding = _conv_padding(padding, kernel, stride, dilation)
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
    extent = windows.span(kernel, dilation)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(size, padding, strict=True))
    if any(e > s for e, s in zip(extent, padded, strict=True)):
        raise ValueError(f"the dilated kernel {extent} (w {w.shape}, dilation {dilation}) is "
                         f"larger than the padded input {padded} (x {x.shape}, padding "
                         f"{_show(padding)})")
    out = windows.out_size(size, kernel, stride, padding, dilation)
    if dy is not None and dy.shape != (n, c_out)[4 - np.ndim(x):] + out:
        raise ValueError(f"dy must have the shape of y, (N, C_out, H_out, W_out) = "
                         f"{(n, c_out)[4 - np.ndim(x):] + out}, got {dy.shape}")
    return Geometry(stride, padding, dilation, groups, kernel, out,
                    windows.remainder(size, kernel, stride, padding, dilation))


def _show(padding):
    """Symmetric padding as (p_h, p_w), as the user most likely wrote it."""
    return tuple(lo for lo, _ in padding) if all(lo == hi for lo, hi in padding) else padding


def transpose_geometry(x: ArrayLike, w: ArrayLike, b: ArrayLike,
                       dy: ArrayLike | None = None, *, stride: IntOrPair = 1,
                       padding: int | Pair | PadPairs = 0, output_padding: IntOrPair = 0,
                       dilation: IntOrPair = 1, groups: int = 1) -> Geometry:
    """Validate conv_transpose2d's arguments; return the Geometry of the conv2d whose dX
    it is (input size H_out, out = x's spatial size, remainder = output_padding).

    Raises ValueError naming the argument and the shapes it got (at trace time).
    """
    n, c_in, h, wd = _check_arrays(x, w, b, dy)
    stride = windows.int_pair("stride", stride, minimum=1)
    dilation = windows.int_pair("dilation", dilation, minimum=1)
    padding = windows.pad_pairs("padding", padding)
    output_padding = windows.int_pair("output_padding", output_padding, minimum=0)
    groups = _groups(groups)
    if any(op >= s and op >= d
           for op, s, d in zip(output_padding, stride, dilation, strict=True)):
        raise ValueError(f"output_padding must be smaller than either stride or dilation "
                         f"in each dimension (as torch), got output_padding {output_padding} "
                         f"with stride {stride} and dilation {dilation}")
    c_w, o_g, kh, kw = w.shape
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide C_in={c_in}, got x {x.shape}")
    if c_w != c_in:
        raise ValueError(f"w must have shape (C_in, C_out / groups, kh, kw) with C_in = "
                         f"{c_in}, got x {x.shape} and w {w.shape}")
    c_out = o_g * groups
    if b.shape != (c_out,):
        raise ValueError(f"b must have shape (C_out,) = ({c_out},) = (groups · w.shape[1],) "
                         f"to match w {w.shape} and groups={groups}, got {b.shape}")
    if min(kh, kw, o_g) < 1:
        raise ValueError(f"w must have a non-empty kernel and C_out / groups >= 1, got "
                         f"{w.shape}")
    kernel, size = (kh, kw), (h, wd)
    out = tuple((i - 1) * s - lo - hi + e + op for i, s, (lo, hi), e, op in
                zip(size, stride, padding, windows.span(kernel, dilation), output_padding,
                    strict=True))
    if min(out) < 1:
        raise ValueError(f"the output would be empty: (H - 1)·s - p_lo - p_hi + (k - 1)·d + "
                         f"output_padding + 1 = {out} for x {x.shape}, w {w.shape}, stride "
                         f"{stride}, padding {_show(padding)}, dilation {dilation} and "
                         f"output_padding {output_padding}")
    if dy is not None and dy.shape != (n, c_out)[4 - np.ndim(x):] + out:
        raise ValueError(f"dy must have the shape of y, (N, C_out, H_out, W_out) = "
                         f"{(n, c_out)[4 - np.ndim(x):] + out}, got {dy.shape}")
    return Geometry(stride, padding, dilation, groups, kernel, size, output_padding)


def conv2d(x: ArrayLike, w: ArrayLike, b: ArrayLike, *, stride: IntOrPair = 1,
           padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1) -> Array:
    """Y = X ⋆ W + b (cross-correlation), torch.nn.functional.conv2d semantics.

    Args:
      x: images, (N, C_in, H, W), or one image (C_in, H, W).
      w: kernels, (C_out, C_in / groups, k_h, k_w).
      b: bias, (C_out,).
      stride: int or pair, >= 1 (each int-or-pair argument takes a 1-tuple (n,) too, as torch).
      padding: int or pair (zeros on both sides), a pair of (before, after) pairs,
        "valid", or "same" (stride 1; the extra row or column after).
      dilation: int or pair, >= 1: spacing of the kernel taps.
      groups: divides C_in and C_out.

    Returns:
      y: (N, C_out, H_out, W_out) (unbatched: (C_out, H_out, W_out)),
      H_out = (H + p_lo + p_hi - (k - 1)·d - 1) // s + 1.
    """
    g = geometry(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = correlate(windows.batched(x), w, g) + b[None, :, None, None]
    return windows.unbatched_like(y, x)


def conv2d_backward(x: ArrayLike, w: ArrayLike, b: ArrayLike, dy: ArrayLike, *,
                    stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
                    groups: int = 1) -> tuple[Array, Array, Array]:
    """Gradients of conv2d: dX (dY dilated by s, padded, ⋆ flipped transposed W),
    dW (X̃ ⋆ dY), db (Σ dY) — see the module docstring for the derivation.

    Args:
      x: images, (N, C_in, H, W) or (C_in, H, W).
      w: kernels, (C_out, C_in / groups, k_h, k_w).
      b: bias, (C_out,) (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dY, the shape of y.
      stride, padding, dilation, groups: as for conv2d.

    Returns:
      (dx, dw, db) with the shapes of (x, w, b).
    """
    g = geometry(x, w, b, dy, stride=stride, padding=padding, dilation=dilation,
                 groups=groups)
    x4, dy4 = windows.batched(x), windows.batched(dy)
    db = dy4.sum(axis=(0, 2, 3))
    return windows.unbatched_like(input_gradient(dy4, w, g), x), weight_gradient(x4, dy4, g), db


def conv_transpose2d(x: ArrayLike, w: ArrayLike, b: ArrayLike, *, stride: IntOrPair = 1,
                     padding: int | Pair | PadPairs = 0, output_padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: int = 1) -> Array:
    """Y = A_wᵀ X + b: conv2d's dX with X as dY, torch.nn.functional.conv_transpose2d.

    Args:
      x: images, (N, C_in, H, W) or (C_in, H, W).
      w: kernels, (C_in, C_out / groups, k_h, k_w) (torch's layout for the transpose).
      b: bias, (C_out,).
      stride: int or pair, >= 1: the spacing of the scattered input pixels.
      padding: int, pair or pair of (before, after) pairs, >= 0: rows and columns
        cropped from the full scatter.
      output_padding: int or pair, smaller than stride or dilation per axis: extra rows
        and columns after (which of the input sizes of the adjoint conv2d is meant).
      dilation: int or pair, >= 1.
      groups: divides C_in.

    Returns:
      y: (N, C_out, H_out, W_out) (unbatched: (C_out, H_out, W_out)),
      H_out = (H - 1)·s - p_lo - p_hi + (k - 1)·d + output_padding + 1.
    """
    g = transpose_geometry(x, w, b, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups)
    y = input_gradient(windows.batched(x), w, g) + b[None, :, None, None]
    return windows.unbatched_like(y, x)


def conv_transpose2d_backward(x: ArrayLike, w: ArrayLike, b: ArrayLike, dy: ArrayLike, *,
                              stride: IntOrPair = 1, padding: int | Pair | PadPairs = 0,
                              output_padding: IntOrPair = 0, dilation: IntOrPair = 1,
                              groups: int = 1) -> tuple[Array, Array, Array]:
    """Gradients of conv_transpose2d: dX = conv2d of dY with w (no bias), dW = conv2d's
    weight gradient with dY and X in swapped roles, db = Σ dY (see the module docstring).

    Args:
      x, w, b: as for conv_transpose2d.
      dy: upstream gradient dE/dY, the shape of y.
      stride, padding, output_padding, dilation, groups: as for conv_transpose2d.

    Returns:
      (dx, dw, db) with the shapes of (x, w, b).
    """
    g = transpose_geometry(x, w, b, dy, stride=stride, padding=padding,
                           output_padding=output_padding, dilation=dilation, groups=groups)
    x4, dy4 = windows.batched(x), windows.batched(dy)
    dy_kept, pad = _trimmed(dy4, g)
    dx = correlate(dy_kept, w, g.replace(padding=pad))    # A_w dY: conv2d's forward
    dw = weight_gradient(dy4, x4, g)                      # dY as conv2d's X, X as its dY
    return windows.unbatched_like(dx, x), dw, dy4.sum(axis=(0, 2, 3))


def correlate(x: ArrayLike, w: ArrayLike, g: Geometry) -> Array:
    """conv2d's forward without the bias: X̃ ⋆ W for batched x (N, C_in, H, W)."""
    return lax.conv_general_dilated(
        x, w, window_strides=g.stride, padding=g.padding, rhs_dilation=g.dilation,
        dimension_numbers=_NCHW, feature_group_count=g.groups, precision=HIGHEST)


def input_gradient(dy: ArrayLike, w: ArrayLike, g: Geometry) -> Array:
    """conv2d's dX for batched dy (N, C_out, H_out, W_out): the correlation of the
    stride-dilated dY, padded by (k - 1)·d - p_lo and (k - 1)·d - p_hi + r, with the
    flipped, per-group transposed kernel. Also conv_transpose2d's forward."""
    c_out, c_g, kh, kw = w.shape
    o_g = c_out // g.groups
    # per group, swap in/out channels: (G·O_g, C_g, ..) -> (O_g, G·C_g, ..) read as IOHW
    w_t = (w.reshape(g.groups, o_g, c_g, kh, kw).transpose(1, 0, 2, 3, 4)
           .reshape(o_g, g.groups * c_g, kh, kw))
    w_flipped = w_t[:, :, ::-1, ::-1]  # a -> k - 1 - a turns the sum into a correlation
    pad = [((k - 1) * d - lo, (k - 1) * d - hi + r)
           for k, d, (lo, hi), r in zip(g.kernel, g.dilation, g.padding, g.remainder,
                                        strict=True)]
    # A dY that, once dilated, is narrower than the dilated kernel is dilated and padded
    # explicitly (lax.pad), then correlated at stride 1: XLA 0.10's CPU simplifier
    # CHECK-fails (aborting the process) on some such convolutions when the dilation and
    # padding are folded into them — JAX autodiff's own transpose among them. Otherwise the
    # folded form, which is what XLA's transpose rule emits and runs at its speed.
    narrow = any((n - 1) * s + 1 < (k - 1) * d + 1
                 for n, s, k, d in zip(g.out, g.stride, g.kernel, g.dilation, strict=True))
    if narrow:
        zero = np.zeros((), dy.dtype)[()]
        dy = lax.pad(dy, zero, [(0, 0, 0), (0, 0, 0)]
                     + [(lo, hi, s - 1) for (lo, hi), s in zip(pad, g.stride, strict=True)])
        pad, dilate = [(0, 0), (0, 0)], (1, 1)
    else:
        dilate = g.stride
    # A negative pad (p > (k - 1)·d) crops: at stride 1 each output row is one padded
    # row, so the same crop is a slice of the result; no negatively padded convolution
    # reaches XLA (whose transpose, under JAX's vjp of conv_transpose2d, is fragile).
    crop = [(max(0, -lo), max(0, -hi)) for lo, hi in pad]
    dx = lax.conv_general_dilated(
        dy, w_flipped, window_strides=(1, 1), padding=[(max(0, lo), max(0, hi))
                                                       for lo, hi in pad],
        lhs_dilation=dilate, rhs_dilation=g.dilation,
        dimension_numbers=("NCHW", "IOHW", "NCHW"), feature_group_count=g.groups,
        precision=HIGHEST)
    (top, bottom), (left, right) = crop
    return dx[:, :, top:dx.shape[2] - bottom, left:dx.shape[3] - right]


def _trimmed(x, g):
    """x and the padding that leave out the r padded rows past the last window.

    The kept padded rows are the first L = (H_out - 1)·s + e: p_lo of padding (fewer if
    L is shorter), then as many rows of x as fit, then what is left of p_hi. Where the
    cut reaches into x it is a slice, not a negative padding: XLA 0.10's CPU simplifier
    aborts on some negatively padded, rhs-dilated grouped convolutions (JAX autodiff's
    own transpose rule among them). It can reach through x into p_lo too (H = 1, p_lo =
    3, p_hi = 0, k = 1, s = 4: L = 1, one row of padding and nothing of x).
    """
    kept, pads = [], []
    for size, (lo, hi), r in zip(x.shape[2:], g.padding, g.remainder, strict=True):
        length = size + lo + hi - r
        before = min(lo, length)
        rows = min(size, length - before)
        kept.append(rows)
        pads.append((before, length - before - rows))
    return x[:, :, :kept[0], :kept[1]], tuple(pads)


def weight_gradient(x: ArrayLike, dy: ArrayLike, g: Geometry) -> Array:
    """conv2d's dW for batched x and dy: X̃ (without the rows past the last window)
    correlated with dY. Also conv_transpose2d's dW, with (dY, X) for (x, dy)."""
    # channels of x play the batch, images the features; dY is the kernel, its taps s
    # apart; the result's window positions are the taps of W, d apart
    x, pad = _trimmed(x, g)
    return lax.conv_general_dilated(
        x, dy, window_strides=g.dilation, padding=pad, rhs_dilation=g.stride,
        dimension_numbers=("CNHW", "IOHW", "CNHW"), batch_group_count=g.groups,
        precision=HIGHEST)
