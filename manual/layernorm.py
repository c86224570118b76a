"""Layer normalisation and its backward pass, by hand.

Forward, each row normalised by its own statistics. A row is the trailing gamma.ndim axes
of x (torch's ``normalized_shape``; D features, the product of their sizes); every
leading axis is a batch axis (x: (..., *normalized_shape), gamma and beta:
normalized_shape; the usual case is one axis, (D,))::

    mu     = 1/D Σ_j x_j                    per row
    var    = 1/D Σ_j (x_j - mu)²            biased (the population variance)
    sigma  = sqrt(var + eps)
    x̂      = (x - mu) / sigma
    y      = gamma ⊙ x̂ + beta

Backward, given dy = dE/dy (the shape of x). gamma and beta are shared by the rows, so
their gradients sum over every leading axis (j runs over all D entries of a row, however
many axes it spans: the derivation never looks at the row's shape)::

    dbeta  = Σ_rows dy
    dgamma = Σ_rows dy ⊙ x̂
    g      = gamma ⊙ dy                     dE/dx̂
    dx     = (g - mean_j(g) - x̂ ⊙ mean_j(g ⊙ x̂)) / sigma
           = (g - mean_j(g)) / sigma - (x - mu) ⊙ mean_j(g ⊙ (x - mu)) / sigma³

The last line is the whole derivation. x̂_j depends on x_k directly (δ_jk / sigma),
through mu (-1/(D sigma)) and through sigma (∂sigma/∂x_k = x̂_k / D, so
-x̂_j x̂_k / (D sigma)); the Jacobian ∂x̂/∂x = (I - 1/D 11ᵀ - 1/D x̂ x̂ᵀ) / sigma is
symmetric, and applying it to g gives dx without ever forming it (O(D) per row, not
O(D²)). The second form of dx is the one computed: its row factors are scalars, so no
x-sized x̂ is written out (XLA's transpose of the forward does not write one either).
Subtracting both means makes dx orthogonal to the two directions the normalisation
removes: Σ_j dx_j = 0 (shifting a row changes nothing) and, for eps = 0,
Σ_j dx_j (x_j - mu) = 0 (nor does scaling it).

Source: J. L. Ba, J. R. Kiros and G. E. Hinton, "Layer Normalization" (2016); the
backward is the batch-norm derivation of the cs231n notes (assignment 2) applied to
rows instead of columns.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import layernorm
    >>> x = jnp.array([[1.0, 2.0, 3.0, 6.0]])
    >>> gamma, beta = jnp.ones(4), jnp.zeros(4)
    >>> [round(float(v), 3) for v in layernorm.forward(x, gamma, beta)[0]]
    [-1.069, -0.535, 0.0, 1.604]
    >>> dx, dgamma, dbeta = layernorm.backward(x, gamma, beta, jnp.ones((1, 4)))
    >>> bool(jnp.allclose(dx, 0.0, atol=1e-6)), dbeta.tolist()   # a shift changes nothing
    (True, [1.0, 1.0, 1.0, 1.0])
"""

import jax.numpy as jnp
from jax import lax

from manual._checks import require_float, require_like_x, require_one_dtype, require_positive
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward"]


def _check(x, gamma, beta, dy, eps):
    arrays = dict(x=x, gamma=gamma, beta=beta) if dy is None else dict(x=x, gamma=gamma,
                                                                       beta=beta, dy=dy)
    for name, a in arrays.items():
        require_float(name, a)
    if jnp.ndim(gamma) < 1:
        raise ValueError(f"gamma must have rank >= 1 (normalized_shape), got shape "
                         f"{jnp.shape(gamma)}")
    k = jnp.ndim(gamma)
    if jnp.ndim(x) < k:
        raise ValueError(f"x must have rank >= {max(k, 1)} (..., *normalized_shape) for gamma "
                         f"{jnp.shape(gamma)}, got shape {jnp.shape(x)}")
    trailing = tuple(jnp.shape(x)[jnp.ndim(x) - k:])
    for name in ("gamma", "beta"):
        if tuple(jnp.shape(arrays[name])) == trailing:
            continue
        if k == 1:
            raise ValueError(f"{name} must have shape (D,) = ({trailing[0]},) with D the last "
                             f"axis of x {jnp.shape(x)}, got {jnp.shape(arrays[name])}")
        raise ValueError(f"{name} must have shape normalized_shape = {trailing}, the trailing "
                         f"{k} axes of x {jnp.shape(x)} (gamma.ndim = {k}), got "
                         f"{jnp.shape(arrays[name])}")
    require_like_x(dy, x)
    require_one_dtype(**arrays)
    require_positive("eps", eps)


def _row(v, ndim):
    """normalized_shape -> (1, ..., 1, *normalized_shape): explicit broadcasting."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _centre(x, k, eps):
    """(x - mu, 1/sigma) per row (the trailing k axes); 1/sigma keeps its reduced axes (size
    1) for broadcasting."""
    axes = tuple(range(x.ndim - k, x.ndim))
    xc = x - jnp.mean(x, axis=axes, keepdims=True)
    return xc, lax.rsqrt(jnp.mean(xc * xc, axis=axes, keepdims=True) + eps)


def forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, *, eps: float = 1e-5) -> Array:
    """y = gamma ⊙ (x - mu) / sqrt(var + eps) + beta, statistics over the trailing gamma.ndim axes.

    Args:
      x: inputs, (..., *normalized_shape) (leading axes are batch axes).
      gamma: scale, normalized_shape (rank >= 1; (D,) normalises the last axis).
      beta: shift, normalized_shape.
      eps: added to the (biased) variance, > 0.

    Returns:
      y: the shape and dtype of x.
    """
    _check(x, gamma, beta, None, eps)
    xc, rstd = _centre(x, gamma.ndim, eps)
    return _row(gamma, x.ndim) * (xc * rstd) + _row(beta, x.ndim)


def backward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, dy: ArrayLike, *,
             eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """dx = (g - mean(g) - x̂ mean(g x̂)) / sigma with g = gamma ⊙ dy; dgamma, dbeta summed.

    Args:
      x: inputs, (..., *normalized_shape).
      gamma: scale, normalized_shape.
      beta: shift, normalized_shape (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dy, the shape of x.
      eps: the forward's eps.

    Returns:
      (dx, dgamma, dbeta) with the shapes of (x, gamma, beta), in their dtype.
    """
    _check(x, gamma, beta, dy, eps)
    k = gamma.ndim
    xc, rstd = _centre(x, k, eps)
    rows = tuple(range(x.ndim - k))  # gamma and beta are shared by every row
    axes = tuple(range(x.ndim - k, x.ndim))  # the D entries of one row
    dgamma = jnp.sum(dy * (xc * rstd), axis=rows)
    dbeta = jnp.sum(dy, axis=rows)
    g = _row(gamma, x.ndim) * dy
    # x̂ mean(g x̂) / sigma = (x - mu) mean(g (x - mu)) / sigma³: per-row factors only, so
    # no x-sized x̂ is written out (what keeps this at autodiff's memory traffic)
    row_term = jnp.mean(g * xc, axis=axes, keepdims=True) * (rstd * rstd * rstd)
    dx = rstd * (g - jnp.mean(g, axis=axes, keepdims=True)) - xc * row_term
    return dx, dgamma, dbeta
