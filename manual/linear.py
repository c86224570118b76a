"""The linear layer over a minibatch, by hand.

Forward (row vectors, batch first)::

    Y = X W + b          X: (N, D)   W: (D, M)   b: (M,)   Y: (N, M)

Backward, given the upstream gradient dY = dE/dY of shape (N, M)::

    dX = dY Wᵀ           (N, M)(M, D) -> (N, D)
    dW = Xᵀ dY           (D, N)(N, M) -> (D, M)
    db = Σₙ dYₙ          the bias is broadcast over the batch, so its gradient
                         sums the batch: (N, M) -> (M,)

Each follows from Y_nm = Σ_d X_nd W_dm + b_m: dE/dX_nd = Σ_m dY_nm W_dm,
dE/dW_dm = Σ_n X_nd dY_nm, dE/db_m = Σ_n dY_nm. The shapes alone fix the order of
every product — the derivative of a scalar with respect to a matrix has the shape of
that matrix.

Source: J. Johnson, "Backpropagation for a Linear Layer" (2017).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import linear
    >>> x, w, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)
    >>> dx, dw, db = linear.backward(x, w, b, jnp.ones((2, 4)))
    >>> db.tolist()
    [2.0, 2.0, 2.0, 2.0]
"""

from manual._checks import require_floats
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward"]

_RANKS = {"x": 2, "w": 2, "b": 1, "dy": 2}


def _check(x, w, b, dy=None):
    arrays = dict(x=x, w=w, b=b) if dy is None else dict(x=x, w=w, b=b, dy=dy)
    require_floats(_RANKS, **arrays)
    (n, d), (d_w, m) = x.shape, w.shape
    if d_w != d:
        raise ValueError(f"w must have shape (D, M) with D = x.shape[1] = {d}, "
                         f"got x {x.shape} and w {w.shape}")
    if b.shape != (m,):
        raise ValueError(f"b must have shape (M,) = ({m},) to match w {w.shape}, got {b.shape}")
    if dy is not None and dy.shape != (n, m):
        raise ValueError(f"dy must have the shape of y = x @ w + b, (N, M) = ({n}, {m}), "
                         f"got {dy.shape}")


def forward(x: ArrayLike, w: ArrayLike, b: ArrayLike) -> Array:
    """Y = X W + b.

    Args:
      x: inputs, (N, D).
      w: weights, (D, M).
      b: bias, (M,).

    Returns:
      y: (N, M), in the dtype of the arguments.
    """
    _check(x, w, b)
    return x @ w + b[None, :]  # b broadcasts over the batch (explicitly: rank promotion raises)


def backward(x: ArrayLike, w: ArrayLike, b: ArrayLike,
             dy: ArrayLike) -> tuple[Array, Array, Array]:
    """Gradients of a linear layer: dX = dY Wᵀ, dW = Xᵀ dY, db = Σₙ dYₙ.

    Args:
      x: inputs, (N, D).
      w: weights, (D, M).
      b: bias, (M,) (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dY, (N, M).

    Returns:
      (dx, dw, db) with the shapes of (x, w, b).
    """
    _check(x, w, b, dy)
    dx = dy @ w.T
    dw = x.T @ dy
    db = dy.sum(axis=0)
    return dx, dw, db
