"""Batch normalisation (training mode) and its backward pass, staged and fused, by hand.

Forward, each feature normalised by its statistics over the batch: x is (N, D),
reduced over axis 0, or an NCHW image batch (N, C, H, W), reduced over (N, H, W) per
channel; gamma and beta have one entry per feature (D,) or channel (C,). M is the
number of values each statistic averages (N, or N·H·W)::

    mu     = 1/M Σ x                        per feature
    var    = 1/M Σ (x - mu)²                biased: training mode divides by M, not M - 1
    sigma  = sqrt(var + eps)
    x̂      = (x - mu) / sigma
    y      = gamma ⊙ x̂ + beta

Training mode needs M > 1: with one value per feature, x - mu = 0 and y = beta whatever
x is, so (as torch) it raises "Expected more than 1 value per channel".

Evaluation mode (``eval_forward`` / ``eval_backward``) normalises with running statistics
mean and var, (D,) or (C,), given as constants (buffers, not differentiated)::

    r      = 1 / sqrt(var + eps)            per feature, a constant
    y      = gamma ⊙ (x - mean) r + beta    affine in x: no sample depends on another

    dx     = gamma r ⊙ dy                   a diagonal Jacobian
    dgamma = Σ dy ⊙ (x - mean) r            dbeta = Σ dy     (Σ over the M values)

``backward`` is the staged derivation: backprop through the computational graph one
node at a time, in reverse (Karpathy's "backprop ninja", the cs231n batchnorm_backward)::

    dbeta  = Σ dy                 dgamma = Σ dy ⊙ x̂          dx̂ = gamma ⊙ dy
    dinv   = Σ dx̂ ⊙ (x - mu)      (the node 1/sigma feeds every x̂ of the feature)
    dxmu1  = dx̂ / sigma           (the direct path into x - mu)
    dsigma = -dinv / sigma²        dvar = dsigma / (2 sigma)
    dxmu2  = 2 (x - mu) dvar / M  (the path through (x - mu)² and the mean of var)
    dmu    = -Σ (dxmu1 + dxmu2)
    dx     = dxmu1 + dxmu2 + dmu / M

gamma, 1/sigma and dvar are constant over a feature, so they come out of the sums:
dgamma = Σ dy (x - mu) / sigma, dinv = gamma Σ dy (x - mu) and dmu = -(gamma Σ dy /
sigma + 2 dvar Σ (x - mu) / M). The x-sized sums are then Σ dy, Σ dy (x - mu) and
Σ (x - mu) (zero in exact arithmetic; the graph has it, so the staged form keeps it),
all read in one pass over x and dy, as in autodiff's own transpose of the forward.

``backward_fast`` is the same Jacobian collapsed into one expression (cs231n's
"alternative" batchnorm_backward_alt), reusing the two sums dgamma and dbeta::

    dx     = gamma / (M sigma) ⊙ (M dy - dbeta - x̂ ⊙ dgamma)

(substitute dinv = sigma dgamma / gamma, Σ (x - mu) = 0, and collect). Every sum runs
over the M values of one feature, each a (D,) or (C,) vector broadcast back; nothing
larger than x is formed.

Sources: S. Ioffe and C. Szegedy, "Batch Normalization" (2015), the backward in §3;
Stanford cs231n assignment 2 (batchnorm_backward, batchnorm_backward_alt); A. Karpathy,
"Building makemore Part 4: Becoming a Backprop Ninja" (2022).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import batchnorm
    >>> x = jnp.array([[1.0, 0.0], [3.0, 4.0]])
    >>> gamma, beta = jnp.ones(2), jnp.zeros(2)
    >>> [round(float(v), 3) for v in batchnorm.forward(x, gamma, beta)[:, 0]]
    [-1.0, 1.0]
    >>> dy = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    >>> dx, dgamma, dbeta = batchnorm.backward(x, gamma, beta, dy)
    >>> dx_fast, _, _ = batchnorm.backward_fast(x, gamma, beta, dy)
    >>> bool(jnp.allclose(dx, dx_fast, atol=1e-6)), dbeta.tolist()
    (True, [1.0, 1.0])
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual._checks import (
    require_float,
    require_like_x,
    require_one_dtype,
    require_positive,
    require_rank,
)
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward", "backward_fast", "eval_forward", "eval_backward"]


def _check(x, gamma, beta, dy, eps, stats=None):
    arrays = dict(x=x, gamma=gamma, beta=beta) if dy is None else dict(x=x, gamma=gamma,
                                                                       beta=beta, dy=dy)
    if stats is not None:
        arrays.update(stats)
    for name, a in arrays.items():
        require_float(name, a)
    if jnp.ndim(x) not in (2, 4):
        raise ValueError(f"x must have rank 2 (N, D) or rank 4 (N, C, H, W), got shape "
                         f"{jnp.shape(x)} and dtype {jnp.result_type(x)}")
    require_rank("gamma", gamma, 1)
    require_rank("beta", beta, 1)
    for name in stats or ():
        require_rank(name, arrays[name], 1)
    c = jnp.shape(x)[1]
    what = "(D,)" if jnp.ndim(x) == 2 else "(C,)"
    for name in ("gamma", "beta") + tuple(stats or ()):
        if jnp.shape(arrays[name]) != (c,):
            raise ValueError(f"{name} must have shape {what} = ({c},) with x.shape[1] of "
                             f"x {jnp.shape(x)}, got {jnp.shape(arrays[name])}")
    require_like_x(dy, x)
    require_one_dtype(**arrays)
    require_positive("eps", eps)
    m = int(np.prod(jnp.shape(x))) // max(c, 1)
    if stats is None and m <= 1:  # training mode: the batch statistics need M > 1
        raise ValueError(f"x: Expected more than 1 value per channel when training, got x of "
                         f"shape {jnp.shape(x)} (M = {m} value per feature); use "
                         f"eval_forward with running statistics for a single sample")


def _axes(x):
    """The reduced axes: (0,) for (N, D), (0, 2, 3) for NCHW."""
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _feature(v, ndim):
    """(C,) -> (1, C) or (1, C, 1, 1): explicit broadcasting along the feature axis."""
    return v.reshape((1, -1) if ndim == 2 else (1, -1, 1, 1))


def _count(x):
    """M, the number of values behind each statistic."""
    return x.size // x.shape[1]


def _centre(x, eps):
    """(x - mu, 1/sigma), both broadcastable against x."""
    axes = _axes(x)
    xmu = x - jnp.mean(x, axis=axes, keepdims=True)
    inv = lax.rsqrt(jnp.mean(xmu * xmu, axis=axes, keepdims=True) + eps)
    return xmu, inv


def forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, *, eps: float = 1e-5) -> Array:
    """y = gamma ⊙ (x - mu) / sqrt(var + eps) + beta with batch statistics (training mode).

    Args:
      x: (N, D), statistics over axis 0; or NCHW (N, C, H, W), statistics per channel
        over (N, H, W).
      gamma: scale, (D,) or (C,).
      beta: shift, (D,) or (C,).
      eps: added to the biased variance, > 0.

    Returns:
      y: the shape and dtype of x.
    """
    _check(x, gamma, beta, None, eps)
    xmu, inv = _centre(x, eps)
    return _feature(gamma, x.ndim) * (xmu * inv) + _feature(beta, x.ndim)


def backward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, dy: ArrayLike, *,
             eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """The staged backward: the graph of the forward, one node at a time, in reverse.

    Args:
      x: (N, D) or (N, C, H, W).
      gamma: scale, (D,) or (C,).
      beta: shift (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dy, the shape of x.
      eps: the forward's eps.

    Returns:
      (dx, dgamma, dbeta) with the shapes of (x, gamma, beta), in their dtype.
    """
    _check(x, gamma, beta, dy, eps)
    axes, m = _axes(x), _count(x)
    xmu, inv = _centre(x, eps)
    g = _feature(gamma, x.ndim)

    def total(a):  # Σ over the M values of each feature, kept broadcastable
        return jnp.sum(a, axis=axes, keepdims=True)

    # Per-feature factors (gamma, 1/sigma, dvar) come out of the sums, so the x-sized
    # sums are Σ dy, Σ dy (x - mu) and Σ (x - mu): one pass over x and dy, as in
    # autodiff's transpose of the forward.
    dy_sum, dy_xmu_sum, xmu_sum = total(dy), total(dy * xmu), total(xmu)
    dbeta = dy_sum
    dgamma = dy_xmu_sum * inv                      # Σ dy x̂
    dx_hat = g * dy
    dinv = g * dy_xmu_sum                          # Σ dx̂ (x - mu)
    dxmu1 = dx_hat * inv
    dsigma = -dinv * inv * inv                     # d(1/sigma) = -dsigma / sigma²
    dvar = 0.5 * dsigma * inv                      # d sqrt(var + eps) = dvar / (2 sigma)
    dxmu2 = (2.0 / m) * xmu * dvar                 # var = 1/M Σ (x - mu)²
    dmu = -((g * dy_sum) * inv + (2.0 / m) * xmu_sum * dvar)  # -Σ (dxmu1 + dxmu2)
    dx = dxmu1 + dxmu2 + dmu / m                   # mu = 1/M Σ x
    return dx, dgamma.reshape(-1), dbeta.reshape(-1)


def backward_fast(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, dy: ArrayLike, *,
                  eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """The fused backward: dx = gamma / (M sigma) ⊙ (M dy - dbeta - x̂ ⊙ dgamma).

    Args and Returns: as ``backward``.
    """
    _check(x, gamma, beta, dy, eps)
    axes, m = _axes(x), _count(x)
    xmu, inv = _centre(x, eps)
    x_hat = xmu * inv
    dbeta = jnp.sum(dy, axis=axes)
    dgamma = jnp.sum(dy * x_hat, axis=axes)
    scale = _feature(gamma, x.ndim) * inv / m
    dx = scale * (m * dy - _feature(dbeta, x.ndim) - x_hat * _feature(dgamma, x.ndim))
    return dx, dgamma, dbeta


def eval_forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, mean: ArrayLike,
                 var: ArrayLike, *, eps: float = 1e-5) -> Array:
    """y = gamma ⊙ (x - mean) / sqrt(var + eps) + beta with running statistics (eval mode).

    Args:
      x: (N, D) or (N, C, H, W) (N = 1 is fine: no statistic is taken from the batch).
      gamma, beta: scale and shift, (D,) or (C,).
      mean, var: the running mean and (unbiased or not, as stored) variance, (D,) or (C,);
        constants, not differentiated.
      eps: added to var, > 0.

    Returns:
      y: the shape and dtype of x.
    """
    _check(x, gamma, beta, None, eps, stats=dict(mean=mean, var=var))
    r = lax.rsqrt(_feature(var, x.ndim) + eps)
    return _feature(gamma, x.ndim) * ((x - _feature(mean, x.ndim)) * r) + _feature(beta, x.ndim)


def eval_backward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, mean: ArrayLike,
                  var: ArrayLike, dy: ArrayLike, *,
                  eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """dx = gamma r ⊙ dy, dgamma = Σ dy ⊙ (x - mean) r, dbeta = Σ dy; r = 1/sqrt(var + eps).

    Args:
      x, gamma, beta, mean, var: as ``eval_forward``.
      dy: upstream gradient dE/dy, the shape of x.
      eps: the forward's eps.

    Returns:
      (dx, dgamma, dbeta) with the shapes of (x, gamma, beta), in their dtype (mean and var
      get no gradient).
    """
    _check(x, gamma, beta, dy, eps, stats=dict(mean=mean, var=var))
    axes = _axes(x)
    r = lax.rsqrt(_feature(var, x.ndim) + eps)
    dgamma = jnp.sum(dy * ((x - _feature(mean, x.ndim)) * r), axis=axes)
    dbeta = jnp.sum(dy, axis=axes)
    return (_feature(gamma, x.ndim) * r) * dy, dgamma, dbeta
