"""An embedding lookup and its backward pass (a scatter-add), by hand.

Forward, a table of V rows of width D read at integer ids of any shape::

    y[i...] = table[ids[i...]]          table: (V, D), ids: S (any shape), y: S + (D,)

Backward, given dy = dE/dy (S + (D,)). Row v of the table is read wherever ids == v, so
its gradient collects every one of those reads::

    dtable[v] = Σ_{i : ids[i] = v} dy[i]

A repeated id accumulates (a scatter-add, never an overwrite); a row that no id reads
gets exactly zero. The ids are indices, not variables: they have no gradient.

Ids are checked for dtype (integer) at trace time. Their values can only be checked on
concrete arrays: eagerly, an id outside [0, V) is a ValueError. Under ``jax.jit`` the
values are unknown while tracing and follow JAX's indexing rules, exactly as the
autodiff of ``table[ids]`` would: a negative id counts from the end (-1 is row V-1, in
both directions); an id outside [-V, V) reads a row of NaN in ``forward`` and adds
nothing in ``backward`` (jnp.take(mode="fill") and .at[].add(mode="drop")).

Source: A. Karpathy, "Building makemore Part 4: Becoming a Backprop Ninja" (2022), the
embedding table's gradient (dC) as a loop of additions over the batch's characters.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import embedding
    >>> table = jnp.arange(8.0).reshape(4, 2)
    >>> ids = jnp.array([[1, 3], [1, 1]])
    >>> embedding.forward(table, ids)[0].tolist()
    [[2.0, 3.0], [6.0, 7.0]]
    >>> embedding.backward(table, ids, jnp.ones((2, 2, 2))).tolist()   # id 1 read 3 times
    [[0.0, 0.0], [3.0, 3.0], [0.0, 0.0], [1.0, 1.0]]
"""

import jax.numpy as jnp
import numpy as np

from manual._checks import require_float, require_rank
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward"]


def _concrete(ids):
    """ids as a numpy array if its values are known now (not traced), else None."""
    try:
        return np.asarray(ids)
    except Exception:  # a tracer under jit: values unknown until run time
        return None


def _check(table, ids, dy=None):
    require_float("table", table)
    require_rank("table", table, 2)
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
        raise ValueError(f"ids must be an integer array, got shape {jnp.shape(ids)} and dtype "
                         f"{jnp.result_type(ids)}")
    vocab, width = jnp.shape(table)
    if dy is not None:
        require_float("dy", dy)
        want = tuple(jnp.shape(ids)) + (width,)
        if tuple(jnp.shape(dy)) != want:
            raise ValueError(f"dy must have the shape of y, ids.shape + (D,) = {want}, "
                             f"got {tuple(jnp.shape(dy))}")
        if jnp.result_type(dy) != jnp.result_type(table):
            raise ValueError(f"dy must have the dtype of table, {jnp.result_type(table)}, "
                             f"got {jnp.result_type(dy)}")
    values = _concrete(ids)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab):
        raise ValueError(f"ids must lie in [0, V) = [0, {vocab}) for table {(vocab, width)}, "
                         f"got values in [{values.min()}, {values.max()}]")


def forward(table: ArrayLike, ids: ArrayLike) -> Array:
    """y = table[ids] for ids in [0, V); an out-of-range id is never clamped.

    Eagerly an id outside [0, V) is a ValueError. Under ``jax.jit`` (values unknown while
    tracing) a negative id in [-V, 0) counts from the end, and an id outside [-V, V) gives
    a row of NaN (``jnp.take(mode="fill")``), not the clamped row plain ``table[ids]``
    would give under jit: a bad id shows up in the output instead of silently reading
    row 0 or V-1.

    Args:
      table: (V, D).
      ids: integer ids in [0, V), any shape S (see above for other values).

    Returns:
      y: S + (D,), in the dtype of the table.
    """
    ids = jnp.asarray(ids)
    _check(table, ids)
    return jnp.take(table, ids, axis=0, mode="fill")


def backward(table: ArrayLike, ids: ArrayLike, dy: ArrayLike) -> Array:
    """dtable[v] = Σ over the positions i with ids[i] = v of dy[i] (a scatter-add).

    Args:
      table: (V, D) (only its shape and dtype are used).
      ids: the forward's ids, any shape S.
      dy: upstream gradient dE/dy, S + (D,).

    Ids as in ``forward``: eagerly outside [0, V) a ValueError; under jit a negative id
    counts from the end and an id outside [-V, V) adds nothing (its NaN row is read by no
    one).

    Returns:
      dtable: (V, D), zero in every row no id reads, in the dtype of the table.
    """
    ids = jnp.asarray(ids)
    _check(table, ids, dy)
    vocab, width = table.shape
    flat_ids = jnp.reshape(ids, (-1,))
    rows = jnp.reshape(dy, (flat_ids.shape[0], width))
    return jnp.zeros((vocab, width), table.dtype).at[flat_ids].add(rows, mode="drop")
