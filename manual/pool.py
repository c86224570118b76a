"""Max and average pooling (subsampling) with window, stride and padding, by hand.

Forward, NCHW, windows of (k_h, k_w) taps moved by stride s over the input padded by p
on each side (torch semantics: max pooling pads with -inf, average pooling counts the
padded zeros, count_include_pad=True; stride=None means stride = window; no ceil
mode)::

    max:  Y[n,c,i,j] = max_{a,β} X̃[n, c, i·s_h + a, j·s_w + β]          X̃ padded with -inf
    avg:  Y[n,c,i,j] = 1/(k_h k_w) Σ_{a,β} X̃[n, c, i·s_h + a, j·s_w + β] X̃ padded with 0

Windows may overlap (s < k) or leave gaps (s > k); H_out = (H + 2p - k) // s + 1.

Backward, given dY = dE/dY (N, C, H_out, W_out). Each output depends on the pixels of
its own window only, so each pixel collects from every window it lies in:

    max:  dX̃[n,c,u,v] = Σ_{i,j} dY[n,c,i,j] · [ (u,v) is the argmax of window (i,j) ]
          The max is locally the identity on its argmax and constant in the others
          (Bouvrie's subsampling layer with max instead of mean: the "switches").
    avg:  dX̃[n,c,u,v] = Σ_{i,j : (u,v) in window (i,j)} dY[n,c,i,j] / (k_h k_w)
          The transpose of the window sum, scaled: every pixel of a window gets an
          equal share of the window's gradient.

and dX is dX̃ without its padding (gradient sent to padding is dropped; for max no
window ever picks a -inf pad, since every window holds a real pixel when p <= k/2).
Both scatter-adds are col2im, one tap at a time (manual._windows.unwindow).

Tie convention (max): when several pixels of a window share the maximum, the whole
dY[n,c,i,j] goes to the FIRST of them in row-major order of the window (smallest a,
then smallest β) — exactly where JAX's gradient of ``lax.reduce_window(x, -inf, lax.max,
...)`` sends it (XLA's select-and-scatter keeps the current pick unless a later tap
is strictly greater). It is not split between the tied pixels.

Padding is validated like torch: 0 <= p <= k/2 per axis, so that no window lies
entirely in the padding.

Sources: J. Bouvrie, "Notes on Convolutional Neural Networks" (2006), subsampling
layers; the convolution-backprop posts of the source notes.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import _windows
from manual._checks import require_floats


def _geometry(x, dy, window, stride, padding):
    arrays = dict(x=x) if dy is None else dict(x=x, dy=dy)
    require_floats({"x": 4, "dy": 4}, **arrays)
    window = _windows.int_pair("window", window, minimum=1)
    stride = window if stride is None else _windows.int_pair("stride", stride, minimum=1)
    padding = _windows.int_pair("padding", padding, minimum=0)
    if any(2 * p > k for p, k in zip(padding, window)):
        raise ValueError(f"padding {padding} must be at most half the window {window} "
                         f"(as in torch), for x {x.shape}")
    size = x.shape[2:]
    if any(k > h + 2 * p for k, h, p in zip(window, size, padding)):
        raise ValueError(f"window {window} is larger than the padded input "
                         f"{tuple(h + 2 * p for h, p in zip(size, padding))} "
                         f"(x {x.shape}, padding {padding})")
    out = _windows.out_size(size, window, stride, padding, (1, 1))
    if dy is not None and dy.shape != x.shape[:2] + out:
        raise ValueError(f"dy must have the shape of y, (N, C, H_out, W_out) = "
                         f"{x.shape[:2] + out}, got {dy.shape}")
    return window, stride, padding, out


def _reduce(x, init, op, window, stride, padding):
    return lax.reduce_window(x, np.asarray(init, x.dtype)[()], op, (1, 1) + window,
                             (1, 1) + stride, ((0, 0), (0, 0)) + tuple((p, p) for p in padding))


def _pad(x, padding, value):
    (ph, pw) = padding
    return jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _crop(dx_pad, size, padding):
    (ph, pw), (h, w) = padding, size
    return dx_pad[:, :, ph:ph + h, pw:pw + w]


def max_pool2d(x, *, window, stride=None, padding=0):
    """Y = max over each window of X padded with -inf.

    Args:
      x: images, (N, C, H, W).
      window: int or pair, the window (k_h, k_w).
      stride: int or pair, >= 1; None means the window.
      padding: int or pair, 0 <= p <= k/2.

    Returns:
      y: (N, C, H_out, W_out), H_out = (H + 2p - k) // s + 1.
    """
    window, stride, padding, _ = _geometry(x, None, window, stride, padding)
    return _reduce(x, -np.inf, lax.max, window, stride, padding)


def avg_pool2d(x, *, window, stride=None, padding=0):
    """Y = mean over each window of X padded with zeros (count_include_pad=True).

    Args and Returns: as max_pool2d.
    """
    window, stride, padding, _ = _geometry(x, None, window, stride, padding)
    return _reduce(x, 0, lax.add, window, stride, padding) / (window[0] * window[1])


def max_pool2d_backward(x, dy, *, window, stride=None, padding=0):
    """dX: each dY entry routed to the first argmax of its window (see the module doc).

    Args:
      x: images, (N, C, H, W).
      dy: upstream gradient dE/dY, (N, C, H_out, W_out).
      window, stride, padding: as for max_pool2d.

    Returns:
      dx, (N, C, H, W).
    """
    window, stride, padding, out = _geometry(x, dy, window, stride, padding)
    x_pad = _pad(x, padding, -np.inf)
    taps = _windows.windows(x_pad, window, stride, (1, 1), out)
    # running argmax in row-major tap order; a later tap wins only if strictly greater,
    # so ties go to the first (jax's convention)
    best, arg = taps[0], jnp.zeros(dy.shape, jnp.int32)
    for k, tap in enumerate(taps[1:], start=1):
        later_wins = tap > best
        best = jnp.where(later_wins, tap, best)
        arg = jnp.where(later_wins, k, arg)
    routed = [jnp.where(arg == k, dy, jnp.zeros_like(dy)) for k in range(len(taps))]
    dx_pad = _windows.unwindow(routed, x_pad.shape[2:], window, stride, (1, 1))
    return _crop(dx_pad, x.shape[2:], padding)


def avg_pool2d_backward(x, dy, *, window, stride=None, padding=0):
    """dX: dY / (k_h k_w) spread over every pixel of its window (see the module doc).

    Args and Returns: as max_pool2d_backward.
    """
    window, stride, padding, out = _geometry(x, dy, window, stride, padding)
    share = dy / (window[0] * window[1])
    padded = tuple(h + 2 * p for h, p in zip(x.shape[2:], padding))
    dx_pad = _windows.unwindow([share] * (window[0] * window[1]), padded, window, stride,
                               (1, 1))
    return _crop(dx_pad, x.shape[2:], padding)
