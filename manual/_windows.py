"""Window geometry shared by convolution and pooling (manual.conv, manual.im2col,
manual.pool).

Along one spatial axis of length H, a window of k taps with dilation d spans
(k - 1)·d + 1 positions; after zero (or -inf) padding p on each side, it fits

    H_out = floor((H + 2p - (k - 1)·d - 1) / s) + 1

times with stride s, and the last r = (H + 2p - (k - 1)·d - 1) mod s padded rows are
never touched by any window: the remainder lost to the stride. Output position i, tap
a reads padded row i·s + a·d.

The two helpers ``windows`` and ``unwindow`` are that read and its transpose. For a
fixed tap (a, b) the map (i, j) -> (i·s + a·d, j·s + b·d) is one-to-one, so reading all
windows is k_h·k_w strided slices, and the scatter-add back (col2im) is k_h·k_w
collision-free strided adds: each is a ``lax.pad`` with stride - 1 zeros between
entries, and the adds of different taps are where overlapping windows accumulate.
"""

import numpy as np
from jax import lax


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_pair(name, value, *, minimum):
    """``value`` (an int or a pair of ints) as a pair, each entry >= ``minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}")
    return pair


def span(kernel, dilation):
    """The extent (k - 1)·d + 1 of a dilated window, per spatial axis."""
    return tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))


def out_size(size, kernel, stride, padding, dilation):
    """H_out per spatial axis (see the module docstring); the caller checks the fit."""
    return tuple((h + 2 * p - e) // s + 1
                 for h, e, s, p in zip(size, span(kernel, dilation), stride, padding))


def remainder(size, kernel, stride, padding, dilation):
    """r per spatial axis: padded rows past the last window, lost to the stride."""
    return tuple((h + 2 * p - e) % s
                 for h, e, s, p in zip(size, span(kernel, dilation), stride, padding))


def windows(x_pad, kernel, stride, dilation, out):
    """The taps of every window of a padded (N, C, Hp, Wp) image.

    Returns a list over taps (a, b) in row-major order of (N, C, H_out, W_out) arrays,
    entry [n, c, i, j] = x_pad[n, c, i·s_h + a·d_h, j·s_w + b·d_w].
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out
    n, c = x_pad.shape[:2]
    return [lax.slice(x_pad, (0, 0, a * dh, b * dw),
                      (n, c, a * dh + (ho - 1) * sh + 1, b * dw + (wo - 1) * sw + 1),
                      (1, 1, sh, sw))
            for a in range(kh) for b in range(kw)]


def unwindow(taps, padded, kernel, stride, dilation):
    """The transpose of ``windows``: scatter-add per-tap (N, C, H_out, W_out) arrays
    back onto a zero (N, C, Hp, Wp) image, ``padded`` = (Hp, Wp) (col2im).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ho, wo = taps[0].shape[2:]
    zero = np.zeros((), taps[0].dtype)[()]
    total = None
    for k, tap in enumerate(taps):
        a, b = divmod(k, kw)
        top, left = a * dh, b * dw
        # stride - 1 zeros between entries put (i, j) at (i·s + a·d, j·s + b·d)
        config = ((0, 0, 0), (0, 0, 0),
                  (top, padded[0] - top - (ho - 1) * sh - 1, sh - 1),
                  (left, padded[1] - left - (wo - 1) * sw - 1, sw - 1))
        placed = lax.pad(tap, zero, config)
        total = placed if total is None else total + placed
    return total
