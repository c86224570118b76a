"""Scaled dot-product attention and multi-head attention, and their backward passes, by hand.

Attention, per batch entry and head (q, k, v: (B, heads, T, d); rows i index queries,
columns j keys)::

    S   = q kᵀ / sqrt(d)                          (T, T) scores
    S_ij = -inf where j > i                        causal only: query i sees keys j <= i
    P   = softmax(S) along j                       P_ij = exp(S_ij - m_i) / Σ_j exp(S_ij - m_i)
    out = P v                                      (T, d)

The causal mask needs no derivation of its own: a masked score is -inf, so its
probability is exactly exp(-inf) = 0, and every backward quantity below carries a
factor P_ij, so the masked entries of dS are exactly 0 as well (the diagonal is never
masked, so the row maximum m_i is finite).

Backward, given dout = dE/dout::

    dv  = Pᵀ dout                                  out = P v is linear in v
    dP  = dout vᵀ                                  ... and in P
    dS  = P ⊙ (dP - rowsum(dP ⊙ P))                the softmax's Jacobian-vector product
    dq  = dS k / sqrt(d)
    dk  = dSᵀ q / sqrt(d)

The softmax line is the derivation that matters. For one row p = softmax(s) the
Jacobian is ∂p_j/∂s_l = p_j (δ_jl - p_l) = diag(p) - p pᵀ, which is symmetric, so
ds = (diag(p) - p pᵀ) dp = p ⊙ dp - p (pᵀ dp) = p ⊙ (dp - <p, dp>). One inner product
per row and an elementwise product: the (T, T) Jacobian of each row is never formed.
The row sums rowsum(dP ⊙ P) = Σ_j (dout_i · v_j) P_ij = dout_i · out_i, the quantity
FlashAttention's backward precomputes (its D_i); here it is taken from dP and P, one
fused elementwise pass, rather than from out, which would cost another matrix product.

Multi-head attention (x: (B, T, D), heads h dividing D, d = D / h; no biases)::

    Q, K, V = x W_q, x W_k, x W_v                  (B, T, D), then split into heads:
                                                   (B, T, D) -> (B, h, T, d)
    O       = attention(Q, K, V), heads merged     (B, T, D)
    y       = O W_o

    dW_o = Oᵀ dy        dO = dy W_oᵀ   (split into heads)
    dQ, dK, dV = the attention backward above      (merged back into (B, T, D))
    dW_q = xᵀ dQ        dW_k = xᵀ dK       dW_v = xᵀ dV
    dx   = dQ W_qᵀ + dK W_kᵀ + dV W_vᵀ             x feeds three projections

where every product over x or y is one matrix product over all B·T rows.

Sources: A. Vaswani et al., "Attention Is All You Need" (2017), scaled dot-product and
multi-head attention; T. Dao et al., "FlashAttention" (2022), the backward pass
dS = P ⊙ (dP - D) with D_i = rowsum(dout ⊙ out) = rowsum(dP ⊙ P).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import attention
    >>> q = k = jnp.zeros((1, 1, 3, 2))
    >>> v = jnp.arange(6.0).reshape(1, 1, 3, 2)
    >>> attention.forward(q, k, v, causal=True)[0, 0, :, 0].tolist()   # running means
    [0.0, 1.0, 2.0]
    >>> dq, dk, dv = attention.backward(q, k, v, jnp.ones((1, 1, 3, 2)), causal=True)
    >>> [round(float(s), 4) for s in dv[0, 0, :, 0]]                    # Σ_i P_ij
    [1.8333, 0.8333, 0.3333]
"""

import jax.numpy as jnp
import numpy as np

from manual._checks import require_floats
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward", "mha_forward", "mha_backward", "PARAM_NAMES"]

PARAM_NAMES = ("w_q", "w_k", "w_v", "w_o")


# --- scaled dot-product attention -------------------------------------------------------

def _check(q, k, v, dout=None):
    arrays = dict(q=q, k=k, v=v) if dout is None else dict(q=q, k=k, v=v, dout=dout)
    require_floats(dict.fromkeys(arrays, 4), **arrays)
    for name in ("k", "v") + (() if dout is None else ("dout",)):
        if arrays[name].shape != q.shape:
            raise ValueError(f"{name} must have the shape of q, (B, heads, T, d) = {q.shape}, "
                             f"got {arrays[name].shape}")
    if q.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"q must have T >= 1 and d >= 1, got (B, heads, T, d) = {q.shape}")


def _check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise ValueError(f"causal must be a bool, got {causal!r}")


def _probabilities(q, k, causal):
    """P = softmax(q kᵀ / sqrt(d)), causal entries exactly 0: (B, heads, T, T)."""
    t, d = q.shape[2], q.shape[3]
    # the scale on q, (T, d), is cheaper than on the (T, T) scores and the same number
    s = jnp.einsum("bhid,bhjd->bhij", q * d ** -0.5, k)
    if causal:  # a numpy constant: query i sees keys j <= i
        s = jnp.where(np.tril(np.ones((t, t), bool))[None, None], s, -jnp.inf)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))  # the diagonal keeps the max finite
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _backward_from_probabilities(q, k, v, p, dout):
    """(dq, dk, dv) given P: the equations of the module docstring."""
    d = q.shape[3]
    dv = jnp.einsum("bhij,bhid->bhjd", p, dout)
    dp = jnp.einsum("bhid,bhjd->bhij", dout, v)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    ds = ds * d ** -0.5  # both dq and dk carry the scale once
    dq = jnp.einsum("bhij,bhjd->bhid", ds, k)
    dk = jnp.einsum("bhij,bhid->bhjd", ds, q)
    return dq, dk, dv


def forward(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False) -> Array:
    """out = softmax(q kᵀ / sqrt(d)) v, per batch entry and head.

    Args:
      q, k, v: queries, keys and values, each (B, heads, T, d).
      causal: if True, query i attends only to keys j <= i (static).

    Returns:
      out: (B, heads, T, d), in the dtype of the arguments.
    """
    _check(q, k, v)
    _check_causal(causal)
    return jnp.einsum("bhij,bhjd->bhid", _probabilities(q, k, causal), v)


def backward(q: ArrayLike, k: ArrayLike, v: ArrayLike, dout: ArrayLike, *,
             causal: bool = False) -> tuple[Array, Array, Array]:
    """dv = Pᵀ dout, dS = P ⊙ (dP - rowsum(dP ⊙ P)) with dP = dout vᵀ, dq, dk from dS.

    Args:
      q, k, v: (B, heads, T, d).
      dout: upstream gradient dE/dout, (B, heads, T, d).
      causal: the forward's mask (static).

    Returns:
      (dq, dk, dv), each (B, heads, T, d), in the dtype of the arguments.
    """
    _check(q, k, v, dout)
    _check_causal(causal)
    return _backward_from_probabilities(q, k, v, _probabilities(q, k, causal), dout)


# --- multi-head attention ---------------------------------------------------------------

def _check_mha(params, x, heads, dy=None):
    if not hasattr(params, "keys") or set(params.keys()) != set(PARAM_NAMES):
        got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(f"params must be a dict with keys {PARAM_NAMES}, got {got}")
    arrays = dict(params, x=x) if dy is None else dict(params, x=x, dy=dy)
    require_floats(dict(dict.fromkeys(PARAM_NAMES, 2), x=3, dy=3), **arrays)
    b, t, d_model = x.shape
    for name in PARAM_NAMES:
        if params[name].shape != (d_model, d_model):
            raise ValueError(f"params[{name!r}] must have shape (D, D) = ({d_model}, {d_model}) "
                             f"with D from x {x.shape}, got {params[name].shape}")
    integer = isinstance(heads, (int, np.integer)) and not isinstance(heads, (bool, np.bool_))
    if not integer or heads <= 0:
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    if d_model % heads:
        raise ValueError(f"heads must divide D: heads={heads} does not divide D = {d_model} "
                         f"of x {x.shape}")
    if t == 0:
        raise ValueError(f"x must have T >= 1, got (B, T, D) = {x.shape}")
    if dy is not None and dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of y, (B, T, D) = {x.shape}, got {dy.shape}")


def _project(x, w):
    """x W over all B·T rows: one matrix product."""
    b, t, d = x.shape
    return (x.reshape(b * t, d) @ w).reshape(b, t, w.shape[1])


def _split_heads(z, heads):
    """(B, T, D) -> (B, heads, T, D / heads)."""
    b, t, d = z.shape
    return z.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def _merge_heads(z):
    """(B, heads, T, d) -> (B, T, heads·d)."""
    b, h, t, d = z.shape
    return z.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def mha_forward(params: dict, x: ArrayLike, *, heads: int, causal: bool = False) -> Array:
    """y = attention(x W_q, x W_k, x W_v split into heads, heads merged) W_o.

    Args:
      params: {"w_q", "w_k", "w_v", "w_o"}, each (D, D).
      x: inputs, (B, T, D).
      heads: the number of heads, dividing D (static).
      causal: if True, position i attends only to positions j <= i (static).

    Returns:
      y: (B, T, D), in the dtype of the arguments.
    """
    _check_mha(params, x, heads)
    _check_causal(causal)
    q, k, v = (_split_heads(_project(x, params[w]), heads) for w in ("w_q", "w_k", "w_v"))
    out = jnp.einsum("bhij,bhjd->bhid", _probabilities(q, k, causal), v)
    return _project(_merge_heads(out), params["w_o"])


def mha_backward(params: dict, x: ArrayLike, dy: ArrayLike, *, heads: int,
                 causal: bool = False) -> tuple[dict, Array]:
    """The gradients of <dy, mha_forward(params, x)> (see the module docstring).

    Args:
      params: {"w_q", "w_k", "w_v", "w_o"}, each (D, D).
      x: inputs, (B, T, D).
      dy: upstream gradient dE/dy, (B, T, D).
      heads: the forward's number of heads (static).
      causal: the forward's mask (static).

    Returns:
      (dparams, dx): dparams a dict with the keys and shapes of params, dx (B, T, D); in
      the dtype of the arguments.
    """
    _check_mha(params, x, dy=dy, heads=heads)
    _check_causal(causal)
    b, t, d_model = x.shape
    q, k, v = (_split_heads(_project(x, params[w]), heads) for w in ("w_q", "w_k", "w_v"))
    p = _probabilities(q, k, causal)
    out = _merge_heads(jnp.einsum("bhij,bhjd->bhid", p, v)).reshape(b * t, d_model)
    dy_rows = dy.reshape(b * t, d_model)
    dout = _split_heads((dy_rows @ params["w_o"].T).reshape(b, t, d_model), heads)
    dq, dk, dv = (_merge_heads(g).reshape(b * t, d_model)
                  for g in _backward_from_probabilities(q, k, v, p, dout))
    x_rows = x.reshape(b * t, d_model)
    dparams = {"w_q": x_rows.T @ dq, "w_k": x_rows.T @ dk, "w_v": x_rows.T @ dv,
               "w_o": out.T @ dy_rows}
    dx = dq @ params["w_q"].T + dk @ params["w_k"].T + dv @ params["w_v"].T
    return dparams, dx.reshape(b, t, d_model)
