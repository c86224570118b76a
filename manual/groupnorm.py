"""Group normalisation and its backward pass, by hand.

Forward, as torch.nn.functional.group_norm: x is (N, C, *spatial) (any number of spatial
axes, none included), the C channels split into G groups of C/G consecutive channels, and
each (sample, group) normalised by its own statistics over its C/G channels and every
spatial position (M = C/G · prod(spatial) values); gamma and beta have one entry per
channel (C,)::

    mu_ng    = 1/M Σ x                      over the M values of sample n, group g
    var_ng   = 1/M Σ (x - mu_ng)²           biased
    sigma_ng = sqrt(var_ng + eps)
    x̂        = (x - mu_ng) / sigma_ng
    y_nc...  = gamma_c x̂_nc... + beta_c

G = 1 is layer norm over (C, *spatial) with a per-channel affine; G = C is instance norm.

Backward, given dy = dE/dy (the shape of x). Within one (sample, group) this is layer
norm's row (manual.layernorm): the statistics see the M values of the group, and
gamma's entry differs per channel but is a constant of the row, so with g = gamma ⊙ dy
(dE/dx̂) the row's Jacobian ∂x̂/∂x = (I - 1/M 11ᵀ - 1/M x̂ x̂ᵀ) / sigma is applied to g,
never formed::

    g      = gamma_c dy                      dE/dx̂
    dx     = (g - mean_grp(g) - x̂ mean_grp(g ⊙ x̂)) / sigma
           = (g - mean_grp(g)) / sigma - (x - mu) mean_grp(g ⊙ (x - mu)) / sigma³
    dgamma_c = Σ_{n, spatial} dy ⊙ x̂         dbeta_c = Σ_{n, spatial} dy

(the affine's gradients sum over the samples and positions that share a channel, not over
the group). mean_grp is the mean over the M values of one (sample, group).

Source: Y. Wu and K. He, "Group Normalization" (ECCV 2018); the backward is layer norm's
(Ba et al. 2016) on the (N, G, M) view of x.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import groupnorm
    >>> x = jnp.array([[[1.0], [3.0], [0.0], [8.0]]])           # N=1, C=4, one position
    >>> y = groupnorm.forward(x, jnp.ones(4), jnp.zeros(4), groups=2, eps=1e-12)
    >>> [round(float(v), 3) for v in y[0, :, 0]]                 # each pair normalised
    [-1.0, 1.0, -1.0, 1.0]
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

__all__ = ["forward", "backward"]


def _check(x, gamma, beta, dy, groups, eps):
    arrays = dict(x=x, gamma=gamma, beta=beta) if dy is None else dict(x=x, gamma=gamma,
                                                                       beta=beta, dy=dy)
    for name, a in arrays.items():
        require_float(name, a)
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must have rank >= 2 (N, C, *spatial), got shape {jnp.shape(x)}")
    require_rank("gamma", gamma, 1)
    require_rank("beta", beta, 1)
    c = jnp.shape(x)[1]
    for name in ("gamma", "beta"):
        if jnp.shape(arrays[name]) != (c,):
            raise ValueError(f"{name} must have shape (C,) = ({c},) with C = x.shape[1] of "
                             f"x {jnp.shape(x)}, got {jnp.shape(arrays[name])}")
    require_like_x(dy, x)
    require_one_dtype(**arrays)
    integer = isinstance(groups, (int, np.integer)) and not isinstance(groups, (bool, np.bool_))
    if not integer or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if c % groups:
        raise ValueError(f"groups must divide C: groups={groups} does not divide C = {c} of "
                         f"x {jnp.shape(x)}")
    require_positive("eps", eps)


def _grouped(a, groups):
    """(N, C, *spatial) -> (N, G, M): the M values of each (sample, group) in one row."""
    return a.reshape(a.shape[0], groups, -1)


def _per_channel(v, x, groups):
    """(C,) -> (1, G, C/G, 1): a channel's entry over the (N, G, C/G, prod(spatial)) view."""
    return v.reshape(1, groups, x.shape[1] // groups, 1)


def _centre(xg, eps):
    """(x - mu, 1/sigma) on the (N, G, M) view; 1/sigma (N, G, 1)."""
    xc = xg - jnp.mean(xg, axis=-1, keepdims=True)
    return xc, lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)


def forward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, *, groups: int,
            eps: float = 1e-5) -> Array:
    """y = gamma_c (x - mu_ng) / sqrt(var_ng + eps) + beta_c, statistics per sample and group.

    Args:
      x: inputs, (N, C, *spatial).
      gamma: scale, (C,).
      beta: shift, (C,).
      groups: G, dividing C (static).
      eps: added to the biased variance, > 0 (torch's default 1e-5).

    Returns:
      y: the shape and dtype of x.
    """
    _check(x, gamma, beta, None, groups, eps)
    n, c = x.shape[:2]
    xc, rstd = _centre(_grouped(x, groups), eps)
    x_hat = (xc * rstd).reshape(n, groups, c // groups, -1)
    y = _per_channel(gamma, x, groups) * x_hat + _per_channel(beta, x, groups)
    return y.reshape(x.shape)


def backward(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, dy: ArrayLike, *, groups: int,
             eps: float = 1e-5) -> tuple[Array, Array, Array]:
    """dx = (g - mean(g) - x̂ mean(g x̂)) / sigma per (sample, group), g = gamma ⊙ dy.

    Args:
      x: inputs, (N, C, *spatial).
      gamma: scale, (C,).
      beta: shift, (C,) (unused by the gradients, taken for a uniform signature).
      dy: upstream gradient dE/dy, the shape of x.
      groups, eps: the forward's.

    Returns:
      (dx, dgamma, dbeta) with the shapes of (x, gamma, beta), in their dtype.
    """
    _check(x, gamma, beta, dy, groups, eps)
    n, c = x.shape[:2]
    per = (n, groups, c // groups, -1)  # (N, G, C/G, prod(spatial))
    xc, rstd = _centre(_grouped(x, groups), eps)
    dy4 = dy.reshape(per)
    x_hat = (xc * rstd).reshape(per)
    dgamma = jnp.sum(dy4 * x_hat, axis=(0, 3)).reshape(c)
    dbeta = jnp.sum(dy4, axis=(0, 3)).reshape(c)
    g = _grouped(_per_channel(gamma, x, groups) * dy4, groups)  # (N, G, M)
    row_term = jnp.mean(g * xc, axis=-1, keepdims=True) * (rstd * rstd * rstd)
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)) - xc * row_term
    return dx.reshape(x.shape), dgamma, dbeta
