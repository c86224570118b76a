"""Writing a curvature matrix tile by tile: the buffer bookkeeping of the stagewise Hessian.

What manual/stagewise.py (and any other exact-curvature code of manual/) shares, so that
its derivation reads as the derivation. Nothing here knows what a tile holds: the caller
passes a function that computes one.

Layout. A layer's parameters θ_l (a slice of ravel order, P_l entries) are ``groups``
rows of ``width`` numbers each: for a dense layer Ŵ_l = [W_l; b_l], n_{l-1} + 1 input
rows of n_l outputs, entry (i, k) at offset_l + i n_l + k. A block H_lm of the matrix is
then a ``groups_l`` x ``groups_m`` grid of (width_l x width_m) cells.

Tiles. A tile is every row of a range of groups i of θ_l against a range of c groups j
of θ_m: (rows x width_l, c x width_m) numbers, one matrix product of the caller's (with
c = 1 a product whose columns are those of one group). A ``Job`` is a strip of tiles:
groups i in [rows) against groups j in [cols), written to ``direct`` (the position of
the first tile) and, transposed, to ``mirror`` (H_ml = H_lmᵀ), so every off-diagonal
pair is exactly transposed and nothing is computed twice. ``strip`` runs a job's tiles
in a lax.fori_loop, each written by a dynamic-update-slice in place: no (P, P)
temporary, no zero-filled intermediate, no full transpose.

Diagonal blocks (``block_jobs``) go in B bands of columns, each band down to its own
last row only, the part of the band above its first row mirrored: (B + 1) / 2B of the
products of the whole block. A block or strip of at most ``Tiling.small`` entries is one
step, without a loop or bands: small nets compile as fast as a single product.

Sample chunks. Where one chunk of samples' costates would exceed ``chunk_bytes`` the
samples are split in equal chunks (zero-padded at the end; the caller makes a padded
sample contribute zero) and the tiles of each chunk add into the buffers
(``accumulate``) inside a lax.scan.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import _tiles
    >>> jobs = _tiles.block_jobs(0, 0, 0, 3, 3, 2, 2, 0, 0, _tiles.Tiling(small=0, bands=3))
    >>> for job in jobs:  # groups i, groups j, where the tile goes and where its mirror
    ...     print(job.rows, job.cols, job.direct, job.mirror)
    (0, 1) (0, 1) (0, 0) (0, 0)
    (0, 2) (1, 2) (0, 2) (2, 0)
    (0, 3) (2, 3) (0, 4) (4, 0)
"""

import jax.numpy as jnp
from jax import lax

__all__ = ["CHUNK_BYTES", "Tiling", "DEFAULT", "Job", "put", "strip", "bands", "block_jobs",
           "chunk_width", "chunks", "pad_split", "transposed", "empty", "accumulate_chunks"]

# Bound on one sample chunk's costates (bytes); beyond it, samples are chunked.
CHUNK_BYTES = 256 * 2**20


class Tiling:
    """How a matrix is cut into tiles (the defaults are measured; tests vary them).

    stack: groups j per loop step where the caller's tile needs no formed mixed costate
      (diagonal blocks, adjacent layers, Gauss-Newton): one product whose left operand
      stacks ``stack`` scaled copies. Measured on the MLP bench shapes (tanh, N = 64,
      P = 970 / 3050 / 10230, CPU time, interleaved medians) 1, 2 and 4 are equal within
      the noise and 8 is slower; 1 keeps the smallest tiles in cache.
    tile_columns: elsewhere (a chunk of the mixed costate is formed) a step covers
      max(1, tile_columns // width_m) groups: one group beat ~96 columns by 30% / 16% /
      even on the same shapes.
    small: a strip (or diagonal block) of at most this many entries is one step.
    bands: column bands per diagonal block.
    unroll: loop steps per iteration of the fori_loop. The tiles of one iteration are
      independent products (only their writes into the buffer are ordered), which XLA's
      CPU runtime may run on different cores at once.
    """

    def __init__(self, *, stack: int = 1, tile_columns: int = 8, small: int = 2**18,
                 bands: int = 4, unroll: int = 1) -> None:
        self.stack, self.tile_columns, self.small, self.bands = stack, tile_columns, small, bands
        self.unroll = unroll

    def fields(self) -> dict:
        return dict(stack=self.stack, tile_columns=self.tile_columns, small=self.small,
                    bands=self.bands, unroll=self.unroll)

    def replace(self, **changes: int) -> "Tiling":
        """A copy with some fields changed."""
        return Tiling(**dict(self.fields(), **changes))

    def __repr__(self) -> str:
        return "Tiling(" + ", ".join(f"{k}={v}" for k, v in self.fields().items()) + ")"


DEFAULT = Tiling()


class Job:
    """Tiles of H_lm: groups i in [rows) of θ_l against groups j in [cols) of θ_m, into
    buffer number ``buf``.

    The tile of groups j0.. goes to ``direct`` (row, col of the first tile) shifted right
    by (j0 - cols[0]) width_m, and its first ``mirror_rows`` groups of rows (None: all),
    transposed, to ``mirror`` shifted down by as much; either may be None (not written).
    """

    def __init__(self, buf, l, m, rows, cols, direct, mirror, mirror_rows=None):
        self.buf, self.l, self.m, self.rows, self.cols = buf, l, m, rows, cols
        self.direct, self.mirror, self.mirror_rows = direct, mirror, mirror_rows


def put(buf, block, row, col, accumulate):
    """Write (or add) ``block`` into ``buf`` at (row, col), in place."""
    if accumulate:
        block = block + lax.dynamic_slice(buf, (row, col), block.shape)
    return lax.dynamic_update_slice(buf, block, (row, col))


def chunk_width(width_m, scaled, tiling, rows=None, n_cols=None):
    """Groups j per loop step: ``tiling.stack`` for the scaled tiles (one product for
    all), else about ``tiling.tile_columns`` columns; all of them at once (no loop at all)
    when the whole strip, ``rows`` x ``n_cols`` groups of width_m columns, is small."""
    if rows is not None and rows * n_cols * width_m <= tiling.small:
        return n_cols
    return tiling.stack if scaled else max(1, tiling.tile_columns // width_m)


def strip(buf, job, tile, *, width_l, width_m, scaled, accumulate, tiling):
    """Every tile of ``job`` into ``buf``: a fori_loop over steps of groups j, then the rest.

    ``tile(j0, c)`` is the tile of groups j0 .. j0 + c - 1 (j0 may be traced, c is
    static): (rows of the job x width_l, c x width_m). ``scaled`` picks the step
    (``chunk_width``).
    """
    lo, hi = job.cols
    n_rows = (job.rows[1] - job.rows[0]) * width_l
    width = chunk_width(width_m, scaled, tiling, n_rows, hi - lo)

    def body(buf, j0, c):
        block = tile(j0, c)
        shift = (j0 - lo) * width_m
        if job.direct is not None:
            buf = put(buf, block, job.direct[0], job.direct[1] + shift, accumulate)
        if job.mirror is not None and job.mirror_rows != 0:  # H_ml = H_lmᵀ
            mirror = block if job.mirror_rows is None else block[:job.mirror_rows * width_l]
            buf = put(buf, mirror.T, job.mirror[0] + shift, job.mirror[1], accumulate)
        return buf

    full, rest = divmod(hi - lo, width)
    if full == 1:
        buf = body(buf, lo, width)
    elif full > 1:
        buf = lax.fori_loop(0, full, lambda t, b: body(b, lo + t * width, width), buf,
                            unroll=min(tiling.unroll, full))
    if rest:
        buf = body(buf, lo + full * width, rest)
    return buf


def bands(n_groups, width, tiling):
    """Column bands [e_b, e_{b+1}) of a diagonal block, on multiples of ``width`` groups."""
    steps = -(-n_groups // width)
    edges = sorted({min(n_groups, round(b * steps / tiling.bands) * width)
                    for b in range(tiling.bands + 1)})
    return list(zip(edges[:-1], edges[1:], strict=True))


def block_jobs(buf, l, m, groups_l, groups_m, width_l, width_m, row, col, tiling):
    """Jobs for the whole block H_lm at (row, col) and, for l < m, H_ml mirrored at
    (col, row).

    A diagonal block (l = m) goes in bands of columns, each down to its own last row; the
    rows above the band are mirrored into the band's rows. A small one is one step.
    """
    if l < m:
        return [Job(buf, l, m, (0, groups_l), (0, groups_m), (row, col), (col, row))]
    if (groups_m * width_m) ** 2 <= tiling.small:
        return [Job(buf, m, m, (0, groups_m), (0, groups_m), (row, col), None)]
    return [Job(buf, m, m, (0, e1), (e0, e1), (row, col + e0 * width_m),
                (row + e0 * width_m, col), mirror_rows=e0)
            for e0, e1 in bands(groups_m, chunk_width(width_m, True, tiling), tiling)]


def transposed(a):
    """aᵀ materialised row-major behind an optimisation barrier.

    Left to itself XLA folds the transpose into the product's dimension numbers, and on
    CPU that product (a short contraction over N, a wide output) then runs at about 60%
    of the speed of the plain (I, N) @ (N, K J Q) it becomes with a row-major aᵀ.
    """
    return lax.optimization_barrier(a.T)


def chunks(n, per_sample_bytes, chunk_bytes):
    """(number of chunks, samples per chunk) keeping one chunk's costates under chunk_bytes."""
    if chunk_bytes is None or n * per_sample_bytes <= chunk_bytes:
        return 1, n
    per_chunk = max(1, int(chunk_bytes // per_sample_bytes))
    count = -(-n // per_chunk)
    return count, -(-n // count)


def pad_split(arr, count, size):
    """(N, ...) -> (count, size, ...), zero-padded at the end."""
    pad = count * size - arr.shape[0]
    arr = jnp.concatenate([arr, jnp.zeros((pad,) + arr.shape[1:], arr.dtype)], axis=0)
    return arr.reshape((count, size) + arr.shape[1:])


def empty(shapes, dtype):
    """Output buffers that the tiles overwrite entirely.

    Every entry is written by a tile or its mirror: lax.empty is a zero fill on CPU and
    an uninitialised allocation on GPU and TPU.
    """
    return [lax.empty(shape, dtype) for shape in shapes]


def accumulate_chunks(write, shapes, dtype, chunked):
    """Sum every chunk's tiles into zeroed buffers of ``shapes``: a lax.scan over the
    leading axis of ``chunked`` (a pytree of (count, size, ...) arrays), ``write(bufs,
    chunk)`` adding one chunk's tiles (``accumulate=True`` in ``put``)."""
    def body(acc, chunk):
        return write(acc, chunk), None

    zeros = tuple(jnp.zeros(shape, dtype) for shape in shapes)
    return lax.scan(body, zeros, chunked)[0]
