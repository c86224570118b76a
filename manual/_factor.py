"""A symmetric matrix as signed columns, without an eigendecomposition.

For symmetric Ω (F x F) with rows Ω_f, Ω = ½ Σ_f (e_f Ω_fᵀ + Ω_f e_fᵀ), and for any
t > 0, a bᵀ + b aᵀ = ((a + t b)(a + t b)ᵀ - (a - t b)(a - t b)ᵀ) / (2 t). So

    Ω = Σ_f (c⁺_f c⁺_fᵀ - c⁻_f c⁻_fᵀ) / (4 t_f),   c^±_f = e_f ± t_f Ω_f,

2F columns with weights ±1/(4 t_f), exact to rounding. t_f = 1/||Ω_f||∞ balances the
two parts of each column (a zero row takes t_f = 1: its columns cancel exactly), so
the difference of squares loses no more than a few ulps of ||e_f|| ||t_f Ω_f||.

Why not eigh: it needs no LAPACK call, which on XLA's CPU backend runs a batched
decomposition on the intra-op thread pool, and two of them scheduled at once (two
independent branches of one program, or two host devices) wait on each other for ever
on a 2-core machine; and it costs one pass over Ω instead of O(F³).
"""

import jax.numpy as jnp

__all__ = ["signed_columns"]


def signed_columns(omega):
    """omega (N, F, F) symmetric -> (c (N, 2F, F), w (N, 2F)), Ω = Σ_k w_k c_k c_kᵀ."""
    f = omega.shape[-1]
    scale = jnp.max(jnp.abs(omega), axis=-1)                      # (N, F)
    t = jnp.where(scale > 0, 1 / jnp.where(scale > 0, scale, 1), 1).astype(omega.dtype)
    eye = jnp.eye(f, dtype=omega.dtype)[None]
    tw = t[..., None] * omega
    c = jnp.concatenate([eye + tw, eye - tw], axis=1)
    w = jnp.concatenate([1 / (4 * t), -1 / (4 * t)], axis=1)
    return c, w
