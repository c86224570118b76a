"""Root-mean-square layer normalisation (RMSNorm) and its backward pass, by hand.

Forward, each row scaled by the root mean square of its entries; a row is the trailing
gamma.ndim axes of x (D entries), every leading axis a batch axis (x: (..., *shape),
gamma: shape). No mean is subtracted and there is no shift (Zhang & Sennrich 2019)::

    ms   = 1/D Σ_j x_j²                     per row
    r    = 1 / sqrt(ms + eps)
    x̂    = x r
    y    = gamma ⊙ x̂

eps=None is the machine epsilon of x's dtype (finfo(dtype).eps), as
torch.nn.functional.rms_norm.

Backward, given dy = dE/dy (the shape of x). gamma is shared by the rows, so its gradient
sums over every leading axis::

    dgamma = Σ_rows dy ⊙ x̂
    g      = gamma ⊙ dy                     dE/dx̂
    dx     = r (g - x̂ mean_j(g ⊙ x̂))
           = r g - x r³ mean_j(g ⊙ x)

The derivation: x̂_j = x_j r depends on x_k directly (δ_jk r) and through r
(∂r/∂x_k = -r³ x_k / D, from ∂ms/∂x_k = 2 x_k / D), so ∂x̂_j/∂x_k = r δ_jk - r³ x_j x_k / D:
the Jacobian r (I - x̂ x̂ᵀ / D) of a row is symmetric, and applied to g it gives
dx = r g - r³ x (xᵀ g) / D, one inner product per row: the (D, D) Jacobian is never
formed. It is layer norm's derivation without the mean's term (no 1/D 11ᵀ). The second
form of dx is the one computed (per-row scalar factors; no x-sized x̂ is written out).
With eps = 0, Σ_j dx_j x_j = r (xᵀg) - r³ ms (xᵀ g) = 0: scaling a row changes nothing.

Source: B. Zhang and R. Sennrich, "Root Mean Square Layer Normalization" (NeurIPS 2019).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import rmsnorm
    >>> x = jnp.array([[3.0, 4.0]])            # ms = 12.5
    >>> [round(float(v), 4) for v in rmsnorm.forward(x, jnp.ones(2), eps=0.5)[0]]
    [0.8321, 1.1094]
    >>> dx, dgamma = rmsnorm.backward(x, jnp.ones(2), x, eps=1e-12)
    >>> round(float(abs(dx).max()), 6)          # dy along x: a rescaling, no change
    0.0
"""

import jax.numpy as jnp
from jax import lax

from manual._checks import require_float, require_like_x, require_one_dtype, require_positive
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward"]


def _check(x, gamma, dy, eps):
    arrays = dict(x=x, gamma=gamma) if dy is None else dict(x=x, gamma=gamma, dy=dy)
    for name, a in arrays.items():
        require_float(name, a)
    if jnp.ndim(gamma) < 1:
        raise ValueError(f"gamma must have rank >= 1 (normalized_shape), got shape "
                         f"{jnp.shape(gamma)}")
    k = jnp.ndim(gamma)
    trailing = tuple(jnp.shape(x)[max(jnp.ndim(x) - k, 0):])
    if jnp.ndim(x) < k or trailing != tuple(jnp.shape(gamma)):
        raise ValueError(f"gamma must have the shape of the trailing gamma.ndim = {k} axes of "
                         f"x {jnp.shape(x)} ({trailing}), got {jnp.shape(gamma)}")
    require_like_x(dy, x)
    require_one_dtype(**arrays)
    if eps is not None:
        require_positive("eps", eps)
    return float(jnp.finfo(jnp.result_type(x)).eps) if eps is None else eps


def _scale(x, k, eps):
    """r = 1/sqrt(mean(x²) + eps) per row (the trailing k axes), reduced axes kept."""
    axes = tuple(range(x.ndim - k, x.ndim))
    return lax.rsqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)


def _row(v, ndim):
    """shape -> (1, ..., 1, *shape): explicit broadcasting over the leading axes."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def forward(x: ArrayLike, gamma: ArrayLike, *, eps: float | None = None) -> Array:
    """y = x / sqrt(mean(x²) + eps) ⊙ gamma over the trailing gamma.ndim axes.

    Args:
      x: inputs, (..., *normalized_shape).
      gamma: scale, normalized_shape (rank >= 1).
      eps: added to the mean square, > 0; None: the machine epsilon of x's dtype.

    Returns:
      y: the shape and dtype of x.
    """
    eps = _check(x, gamma, None, eps)
    return _row(gamma, x.ndim) * (x * _scale(x, gamma.ndim, eps))


def backward(x: ArrayLike, gamma: ArrayLike, dy: ArrayLike, *,
             eps: float | None = None) -> tuple[Array, Array]:
    """dx = r g - x r³ mean(g ⊙ x) with g = gamma ⊙ dy, r = 1/sqrt(ms + eps); dgamma summed.

    Args:
      x: inputs, (..., *normalized_shape).
      gamma: scale, normalized_shape.
      dy: upstream gradient dE/dy, the shape of x.
      eps: the forward's eps.

    Returns:
      (dx, dgamma) with the shapes of (x, gamma), in their dtype.
    """
    eps = _check(x, gamma, dy, eps)
    k = gamma.ndim
    axes = tuple(range(x.ndim - k, x.ndim))
    r = _scale(x, k, eps)
    dgamma = jnp.sum(dy * (x * r), axis=tuple(range(x.ndim - k)))
    g = _row(gamma, x.ndim) * dy
    dx = r * g - x * (jnp.mean(g * x, axis=axes, keepdims=True) * (r * r * r))
    return dx, dgamma
