"""Window geometry shared by convolution and pooling (manual.conv, manual.im2col,
manual.pool).

Along one spatial axis of length H, a window of k taps with dilation d spans
e = (k - 1)·d + 1 positions. Padded by p_lo before and p_hi after (zeros for a
convolution, -inf or zeros for pooling), it fits

    H_out = floor((H + p_lo + p_hi - e) / s) + 1

times with stride s, and the last r = (H + p_lo + p_hi - e) mod s padded rows are never
touched by any window: the remainder lost to the stride. Output position i, tap a
reads padded row i·s + a·d, that is input row i·s + a·d - p_lo.

The two helpers ``windows`` and ``unwindow`` are that read and its transpose. For a
fixed tap (a, b) the map (i, j) -> (i·s + a·d, j·s + b·d) is one-to-one, so reading all
windows is k_h·k_w strided slices, and the scatter-add back (col2im) is k_h·k_w
collision-free strided adds: each is a ``lax.pad`` with stride - 1 zeros between
entries, and the adds of different taps are where overlapping windows accumulate.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import windows
    >>> windows.out_size((5, 4), (3, 2), (2, 1), ((1, 1), (0, 0)), (1, 1))
    (3, 3)
    >>> x = jnp.arange(4.0).reshape(1, 1, 1, 4)
    >>> [t[0, 0, 0].tolist() for t in windows.windows(x, (1, 2), (1, 2), (1, 1), (1, 2))]
    [[0.0, 2.0], [1.0, 3.0]]
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Array", "ArrayLike", "Pair", "PadPairs", "IntOrPair", "Padding", "is_int",
           "int_pair", "pad_pairs", "span", "out_size", "remainder", "windows", "unwindow",
           "batched", "unbatched_like"]

# jax.Array and jax.typing.ArrayLike, spelled with the modules manual/ may import
# (jnp.ndarray is jax.Array): the type hints of the public functions.
Array = jnp.ndarray
ArrayLike = jnp.ndarray | np.ndarray | np.bool_ | np.number | bool | int | float | complex
Pair = tuple[int, int]
PadPairs = tuple[Pair, Pair]
IntOrPair = int | Pair                   # stride, dilation, window: one int for both axes
Padding = int | Pair | PadPairs | str    # conv2d's padding; str: "same" or "valid"


def batched(a: Array) -> Array:
    """(N, C, H, W) as given; an unbatched (C, H, W) as a batch of one (torch's rule)."""
    return a if a.ndim == 4 else a[None]


def unbatched_like(y: Array, x: ArrayLike) -> Array:
    """``y`` back to the batching of the input ``x``: an unbatched x gets an unbatched y."""
    return y if np.ndim(x) == 4 else y[0]


def is_int(v: object) -> bool:
    """A Python or numpy integer, and not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_pair(name: str, value: object, *, minimum: int) -> Pair:
    """``value`` (an int, a 1-tuple or a pair of ints) as a pair, each entry >= ``minimum``.

    A 1-tuple ``(n,)`` (or ``[n]``) is ``n`` on both axes, as torch accepts it.
    Raises ValueError naming ``name`` otherwise.
    """
    if is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 1 and is_int(value[0]):
        pair = (int(value[0]), int(value[0]))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r} (a 1-tuple "
                         f"(n,) is n on both axes)")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}")
    return pair


def pad_pairs(name: str, value: object) -> PadPairs:
    """Padding as ((before, after) rows, (before, after) columns), each >= 0.

    ``value`` is an int (every side), a 1-tuple (p,) (every side, as torch), a pair
    (p_h, p_w) (symmetric per axis) or a pair of (before, after) pairs. Raises ValueError
    naming ``name`` otherwise.
    """
    def is_pair(v):
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(map(is_int, v))

    one = isinstance(value, (tuple, list)) and len(value) == 1 and is_int(value[0])
    if is_int(value) or is_pair(value) or one:
        ph, pw = int_pair(name, value, minimum=0)
        return ((ph, ph), (pw, pw))
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(is_pair, value))):
        raise ValueError(f"{name} must be an int, a pair of ints or a pair of (before, "
                         f"after) pairs of ints, each >= 0, got {value!r}")
    pairs = tuple((int(lo), int(hi)) for lo, hi in value)
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"{name} must be >= 0 on every side, got {value!r}")
    return pairs


def span(kernel: Pair, dilation: Pair) -> Pair:
    """The extent e = (k - 1)·d + 1 of a dilated window, per spatial axis."""
    return tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True))


def out_size(size: Pair, kernel: Pair, stride: Pair, padding: PadPairs,
             dilation: Pair) -> Pair:
    """H_out per spatial axis (see the module docstring); the caller checks the fit."""
    return tuple((h + lo + hi - e) // s + 1 for h, e, s, (lo, hi)
                 in zip(size, span(kernel, dilation), stride, padding, strict=True))


def remainder(size: Pair, kernel: Pair, stride: Pair, padding: PadPairs,
              dilation: Pair) -> Pair:
    """r per spatial axis: padded rows past the last window, lost to the stride."""
    return tuple((h + lo + hi - e) % s for h, e, s, (lo, hi)
                 in zip(size, span(kernel, dilation), stride, padding, strict=True))


def windows(x_pad: ArrayLike, kernel: Pair, stride: Pair, dilation: Pair,
            out: Pair) -> list[Array]:
    """The taps of every window of a padded (N, C, Hp, Wp) image.

    Args:
      x_pad: the padded image, (N, C, Hp, Wp); every window must fit inside it.
      kernel, stride, dilation: pairs.
      out: (H_out, W_out), the number of windows per axis.

    Returns:
      A list over taps (a, b) in row-major order of (N, C, H_out, W_out) arrays, entry
      [n, c, i, j] = x_pad[n, c, i·s_h + a·d_h, j·s_w + b·d_w].
    """
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out
    n, c = x_pad.shape[:2]
    return [lax.slice(x_pad, (0, 0, a * dh, b * dw),
                      (n, c, a * dh + (ho - 1) * sh + 1, b * dw + (wo - 1) * sw + 1),
                      (1, 1, sh, sw))
            for a in range(kh) for b in range(kw)]


def unwindow(taps: list[ArrayLike], padded: Pair, kernel: Pair, stride: Pair,
             dilation: Pair) -> Array:
    """The transpose of ``windows`` (col2im): scatter-add per-tap arrays back.

    Args:
      taps: k_h·k_w arrays (N, C, H_out, W_out), in the row-major tap order of ``windows``.
      padded: (Hp, Wp), the size of the padded image they were read from.
      kernel, stride, dilation: pairs, as for ``windows``.

    Returns:
      (N, C, Hp, Wp): every tap entry added at the pixel it was read from.
    """
    kw, (sh, sw), (dh, dw) = kernel[1], stride, dilation
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
