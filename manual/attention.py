"""Scaled dot-product attention and multi-head attention, and their backward passes, by hand.

Attention, per batch entry and head (rows i index queries, columns j keys; q (Tq, d),
k (Tk, d), v (Tk, dv) for one head)::

    S    = scale · q kᵀ                            (Tq, Tk) scores, scale = 1/sqrt(d) by default
    S_ij = -inf where key j is masked              a boolean mask False, or causal j > i
    S    = S + A                                   an additive float mask A (may hold -inf)
    P    = softmax(S) along j                      P_ij = exp(S_ij - m_i) / Σ_j exp(S_ij - m_i)
    out  = P v                                     (Tq, dv)

Shapes: q (..., Hq, Tq, d), k (..., Hk, Tk, d), v (..., Hk, Tk, dv). The leading axes
broadcast against each other as numpy (and torch) broadcast; Tq and Tk may differ
(cross-attention). Causal with Tq != Tk is aligned to the top left, as torch's
``is_causal``: query i sees keys j <= i.

Masks need no derivation of their own: a masked score is -inf, so its probability is
exactly exp(-inf) = 0, and every backward quantity below carries a factor P_ij, so the
masked entries of dS are exactly 0 as well. The mask is a constant, not differentiated.
A row whose every key is masked has no softmax (0/0); it is defined as P_i = 0, so
out_i = 0 and the row contributes nothing to any gradient (m_i is taken as 0 there and
the sum Σ_j e_ij = 0 is replaced by 1). torch returns NaN for such a row.

Backward, given dout = dE/dout::

    dv  = Pᵀ dout                                  out = P v is linear in v
    dP  = dout vᵀ                                  ... and in P
    dS  = P ⊙ (dP - rowsum(dP ⊙ P))                the softmax's Jacobian-vector product
    dq  = scale · dS k
    dk  = scale · dSᵀ q

The softmax line is the derivation that matters. For one row p = softmax(s) the
Jacobian is ∂p_j/∂s_l = p_j (δ_jl - p_l) = diag(p) - p pᵀ, which is symmetric, so
ds = (diag(p) - p pᵀ) dp = p ⊙ dp - p (pᵀ dp) = p ⊙ (dp - <p, dp>). One inner product
per row and an elementwise product: the (Tk, Tk) Jacobian of each row is never formed.
The row sums rowsum(dP ⊙ P) = Σ_j (dout_i · v_j) P_ij = dout_i · out_i, the quantity
FlashAttention's backward precomputes (its D_i); here it is taken from dP and P, one
fused elementwise pass, rather than from out, which would cost another matrix product.
An additive mask enters S as a constant shift, so ∂S/∂(q kᵀ) is unchanged; for a fully
masked row P_i = 0, hence dS_i = 0 and dq_i = 0.

Grouped-query heads (Hq = G · Hk): query head h reads key/value head h // G. Group the
query heads as (Hk, G); each key/value head is used by its G query heads, so by the
multivariable chain rule its gradients are the sums over the group::

    dk_c = Σ_{g < G} scale · dS_{cG+g}ᵀ q_{cG+g}        dv_c = Σ_{g < G} P_{cG+g}ᵀ dout_{cG+g}

Broadcast leading axes are the same rule once more: an input broadcast along an axis is
read by every entry of that axis, so its gradient is summed over the axis (and reshaped
to the input's own shape).

Multi-head attention (x: (B, T, D), heads h dividing D, d = D / h; no biases; context
(B, S, D) for cross-attention, else context = x)::

    Q = x W_q;  K, V = context W_k, context W_v    then split into heads:
                                                   (B, T, D) -> (B, h, T, d)
    O       = attention(Q, K, V), heads merged     (B, T, D)
    y       = O W_o

    dW_o = Oᵀ dy        dO = dy W_oᵀ   (split into heads)
    dQ, dK, dV = the attention backward above      (merged back into (B, ·, D))
    dW_q = xᵀ dQ        dW_k = contextᵀ dK          dW_v = contextᵀ dV
    dx   = dQ W_qᵀ                                 + dK W_kᵀ + dV W_vᵀ when context is x
    dcontext = dK W_kᵀ + dV W_vᵀ                   (cross-attention: its own gradient)

where every product over x, context or y is one matrix product over all rows.

Sources: A. Vaswani et al., "Attention Is All You Need" (2017), scaled dot-product and
multi-head attention; T. Dao et al., "FlashAttention" (2022), the backward pass
dS = P ⊙ (dP - D) with D_i = rowsum(dout ⊙ out) = rowsum(dP ⊙ P); J. Ainslie et al.,
"GQA" (2023), grouped-query attention.

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
    >>> mask = jnp.array([True, False, True])                           # key 1 masked out
    >>> attention.forward(q, k, v, mask=mask)[0, 0, :, 0].tolist()
    [2.0, 2.0, 2.0]
"""

import jax.numpy as jnp
import numpy as np

from manual._checks import require_float, require_one_dtype
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward", "mha_forward", "mha_backward", "PARAM_NAMES"]

PARAM_NAMES = ("w_q", "w_k", "w_v", "w_o")


# --- scaled dot-product attention -------------------------------------------------------

def _check(q, k, v, dout=None, mask=None, scale=None):
    """Validate; return (batch, hq, hk, tq, tk, dv): the broadcast batch shape and sizes."""
    arrays = dict(q=q, k=k, v=v) if dout is None else dict(q=q, k=k, v=v, dout=dout)
    for name, a in arrays.items():
        require_float(name, a)
        if np.ndim(a) < 3:
            raise ValueError(f"{name} must have rank >= 3 (..., heads, T, d), got shape "
                             f"{np.shape(a)} and dtype {jnp.result_type(a)}")
    require_one_dtype(**arrays)
    (*_, hq, tq, d), (*_, hk, tk, dk), (*_, hv, tv, dv) = q.shape, k.shape, v.shape
    if tq == 0 or d == 0:
        raise ValueError(f"q must have T >= 1 and d >= 1, got (..., heads, T, d) = {q.shape}")
    if dk != d:
        raise ValueError(f"k must have the last axis d of q, (..., heads, T, d) = {q.shape}, "
                         f"got {k.shape}")
    if (hv, tv) != (hk, tk) or dv == 0:
        raise ValueError(f"v must have the heads and T of k, (..., {hk}, {tk}, dv) with "
                         f"dv >= 1 for k {k.shape}, got {v.shape}")
    if tk == 0:
        raise ValueError(f"k must have T >= 1, got (..., heads, T, d) = {k.shape}")
    if hq % hk:
        raise ValueError(f"the heads of q must be a multiple of those of k and v (grouped "
                         f"query heads): Hq = {hq} of q {q.shape}, Hk = {hk} of k {k.shape}")
    try:
        batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    except ValueError:
        raise ValueError(f"the leading (batch) axes of q, k and v must broadcast, got "
                         f"q {q.shape}, k {k.shape}, v {v.shape}") from None
    out_shape = batch + (hq, tq, dv)
    if dout is not None and dout.shape != out_shape:
        raise ValueError(f"dout must have the shape of out, (..., Hq, Tq, dv) = {out_shape}, "
                         f"got {dout.shape}")
    if mask is not None:
        mask_dtype = jnp.result_type(mask)
        if not (mask_dtype == jnp.bool_ or jnp.issubdtype(mask_dtype, jnp.floating)):
            raise ValueError(f"mask must be boolean (True = attend) or an additive float "
                             f"array, got shape {np.shape(mask)} and dtype {mask_dtype}")
        scores = batch + (hq, tq, tk)
        try:
            if np.broadcast_shapes(np.shape(mask), scores) != scores:
                raise ValueError
        except ValueError:
            raise ValueError(f"mask must broadcast to the scores (..., Hq, Tq, Tk) = "
                             f"{scores}, got shape {np.shape(mask)}") from None
    number = isinstance(scale, (int, float, np.number)) and not isinstance(scale, (bool, np.bool_))
    if scale is not None and not number and not (hasattr(scale, "dtype") and
                                                 np.ndim(scale) == 0):
        raise ValueError(f"scale must be a real number or None (1/sqrt(d)), got {scale!r}")
    if number and not np.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return batch, hq, hk, tq, tk, dv


def _check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise ValueError(f"causal must be a bool, got {causal!r}")


def _grouped(q, k, v, batch, hq, hk):
    """q as (*batch, Hk, G, Tq, d), k and v as (*batch, Hk, Tk, ·): query head c·G + g
    reads key/value head c."""
    q = jnp.broadcast_to(q, batch + q.shape[-3:])
    k = jnp.broadcast_to(k, batch + k.shape[-3:])
    v = jnp.broadcast_to(v, batch + v.shape[-3:])
    return q.reshape(batch + (hk, hq // hk) + q.shape[-2:]), k, v


def _probabilities(q, k, causal, mask=None, scale=None):
    """P = softmax(scale q kᵀ + mask) for grouped q (..., Hk, G, Tq, d), k (..., Hk, Tk, d):
    (..., Hk, G, Tq, Tk); masked entries exactly 0, a fully masked row all 0."""
    tq, d, tk = q.shape[-2], q.shape[-1], k.shape[-2]
    # the scale on q, (Tq, d), is cheaper than on the (Tq, Tk) scores and the same number
    s = jnp.einsum("...hgid,...hjd->...hgij", q * (d ** -0.5 if scale is None else scale), k)
    guarded = False
    if mask is not None:
        heads = s.shape[-4] * s.shape[-3]  # Hq = Hk · G
        mask = jnp.broadcast_to(mask, s.shape[:-4] + (heads, tq, tk))
        mask = mask.reshape(s.shape)
        if mask.dtype == jnp.bool_:
            s = jnp.where(mask, s, -jnp.inf)
        else:
            s = s + mask.astype(s.dtype)
        guarded = True
    if causal:  # a numpy constant: query i sees keys j <= i (top-left aligned)
        s = jnp.where(np.tril(np.ones((tq, tk), bool)).reshape((1,) * (s.ndim - 2) + (tq, tk)),
                      s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    if guarded:  # a row with every key masked: m = -inf; take 0, so e = exp(-inf) = 0
        m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m)  # causal alone keeps the diagonal, so m is finite without a mask
    total = jnp.sum(e, axis=-1, keepdims=True)
    if guarded:  # ... and that row's P is 0 / 1 = 0, not 0 / 0
        total = jnp.where(total > 0, total, 1.0)
    return e / total


def _reduce_to(g, shape):
    """Sum a gradient over the axes its input was broadcast along: g -> shape."""
    extra = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(extra))) if extra else g
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=ones, keepdims=True) if ones else g


def _backward_from_probabilities(q, k, v, p, dout, scale=None):
    """(dq, dk, dv) given P, grouped q (..., Hk, G, Tq, d) and dout (..., Hk, G, Tq, dv):
    the equations of the module docstring, dk and dv summed over each group G."""
    d = q.shape[-1]
    dv = jnp.einsum("...hgij,...hgid->...hjd", p, dout)
    dp = jnp.einsum("...hgid,...hjd->...hgij", dout, v)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
    ds = ds * (d ** -0.5 if scale is None else scale)  # both dq and dk carry the scale once
    dq = jnp.einsum("...hgij,...hjd->...hgid", ds, k)
    dk = jnp.einsum("...hgij,...hgid->...hjd", ds, q)
    return dq, dk, dv


def forward(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, causal: bool = False,
            mask: ArrayLike | None = None, scale: float | None = None) -> Array:
    """out = softmax(scale · q kᵀ, masked) v, per batch entry and head.

    Args:
      q: queries, (..., Hq, Tq, d).
      k: keys, (..., Hk, Tk, d), Hk dividing Hq (query head h reads head h // (Hq/Hk)).
      v: values, (..., Hk, Tk, dv). The leading axes of q, k and v broadcast.
      causal: if True, query i attends only to keys j <= i (static; top-left aligned
        when Tq != Tk, as torch's ``is_causal``).
      mask: None; a boolean array (True = attend) or an additive float array (added to
        the scores; -inf masks), broadcastable to (..., Hq, Tq, Tk); not differentiated.
        Combined with causal, a key is attended when both allow it. A query with every
        key masked gets out = 0.
      scale: the factor on q kᵀ; None is 1/sqrt(d).

    Returns:
      out: (..., Hq, Tq, dv), the broadcast leading axes, in the dtype of the arguments.
    """
    batch, hq, hk, tq, _, dv = _check(q, k, v, mask=mask, scale=scale)
    _check_causal(causal)
    qg, kb, vb = _grouped(q, k, v, batch, hq, hk)
    out = jnp.einsum("...hgij,...hjd->...hgid", _probabilities(qg, kb, causal, mask, scale), vb)
    return out.reshape(batch + (hq, tq, dv))


def backward(q: ArrayLike, k: ArrayLike, v: ArrayLike, dout: ArrayLike, *,
             causal: bool = False, mask: ArrayLike | None = None,
             scale: float | None = None) -> tuple[Array, Array, Array]:
    """dv = Pᵀ dout, dS = P ⊙ (dP - rowsum(dP ⊙ P)) with dP = dout vᵀ, dq, dk from dS.

    Args:
      q, k, v: as ``forward``.
      dout: upstream gradient dE/dout, (..., Hq, Tq, dv) (the shape of out).
      causal, mask, scale: the forward's (the mask is a constant: no gradient).

    Returns:
      (dq, dk, dv) with the shapes of (q, k, v): summed over the query heads that share a
      key/value head and over broadcast axes; in the dtype of the arguments.
    """
    batch, hq, hk, tq, _, dv_size = _check(q, k, v, dout, mask=mask, scale=scale)
    _check_causal(causal)
    qg, kb, vb = _grouped(q, k, v, batch, hq, hk)
    doutg = dout.reshape(qg.shape[:-1] + (dv_size,))
    p = _probabilities(qg, kb, causal, mask, scale)
    dq, dk, dv = _backward_from_probabilities(qg, kb, vb, p, doutg, scale)
    return (_reduce_to(dq.reshape(batch + q.shape[-3:]), q.shape),
            _reduce_to(dk, k.shape), _reduce_to(dv, v.shape))


# --- multi-head attention ---------------------------------------------------------------

def _check_mha(params, x, heads, dy=None, context=None):
    if not hasattr(params, "keys") or set(params.keys()) != set(PARAM_NAMES):
        got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(f"params must be a dict with keys {PARAM_NAMES}, got {got}")
    arrays = dict(params, x=x)
    if dy is not None:
        arrays["dy"] = dy
    if context is not None:
        arrays["context"] = context
    for name, a in arrays.items():
        require_float(name if name in ("x", "dy", "context") else f"params[{name!r}]", a)
        rank = 3 if name in ("x", "dy", "context") else 2
        if np.ndim(a) != rank:
            label = name if rank == 3 else f"params[{name!r}]"
            raise ValueError(f"{label} must have rank {rank}, got shape {np.shape(a)} and "
                             f"dtype {jnp.result_type(a)}")
    require_one_dtype(**arrays)
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
    if context is not None and (context.shape[0] != b or context.shape[2] != d_model
                                or context.shape[1] == 0):
        raise ValueError(f"context must have shape (B, S, D) = ({b}, S, {d_model}) with S >= 1 "
                         f"for x {x.shape}, got {context.shape}")
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


def _mha_mask(mask, b, heads, t, s):
    """Validate the mask against the scores (B, heads, T, S) of multi-head attention."""
    if mask is None:
        return None
    _check(jnp.zeros((b, heads, t, 1), jnp.float32), jnp.zeros((b, heads, s, 1), jnp.float32),
           jnp.zeros((b, heads, s, 1), jnp.float32), mask=mask)
    return mask


def _grouped_heads(z, heads):
    """(B, T, D) -> (B, heads, 1, T, d): one query head per key/value head."""
    return _split_heads(z, heads)[:, :, None]


def mha_forward(params: dict, x: ArrayLike, *, heads: int, causal: bool = False,
                mask: ArrayLike | None = None, context: ArrayLike | None = None) -> Array:
    """y = attention(x W_q, c W_k, c W_v split into heads, heads merged) W_o, c = context or x.

    Args:
      params: {"w_q", "w_k", "w_v", "w_o"}, each (D, D).
      x: inputs (the queries), (B, T, D).
      heads: the number of heads, dividing D (static).
      causal: if True, position i attends only to positions j <= i (static).
      mask: None, or a boolean (True = attend) or additive float mask broadcastable to
        (B, heads, T, S), as ``forward``'s.
      context: None (self-attention), or (B, S, D): the keys and values come from it
        (cross-attention).

    Returns:
      y: (B, T, D), in the dtype of the arguments.
    """
    _check_mha(params, x, heads, context=context)
    _check_causal(causal)
    c = x if context is None else context
    mask = _mha_mask(mask, x.shape[0], heads, x.shape[1], c.shape[1])
    q = _grouped_heads(_project(x, params["w_q"]), heads)
    k, v = (_split_heads(_project(c, params[w]), heads) for w in ("w_k", "w_v"))
    out = jnp.einsum("...hgij,...hjd->...hgid", _probabilities(q, k, causal, mask), v)
    return _project(_merge_heads(out[:, :, 0]), params["w_o"])


def mha_backward(params: dict, x: ArrayLike, dy: ArrayLike, *, heads: int,
                 causal: bool = False, mask: ArrayLike | None = None,
                 context: ArrayLike | None = None) -> tuple:
    """The gradients of <dy, mha_forward(params, x)> (see the module docstring).

    Args:
      params: {"w_q", "w_k", "w_v", "w_o"}, each (D, D).
      x: inputs, (B, T, D).
      dy: upstream gradient dE/dy, (B, T, D).
      heads: the forward's number of heads (static).
      causal, mask, context: the forward's (the mask is a constant: no gradient).

    Returns:
      (dparams, dx) for self-attention, (dparams, dx, dcontext) when context is given:
      dparams a dict with the keys and shapes of params, dx (B, T, D), dcontext (B, S, D);
      in the dtype of the arguments.
    """
    _check_mha(params, x, dy=dy, heads=heads, context=context)
    _check_causal(causal)
    c = x if context is None else context
    b, t, d_model = x.shape
    s = c.shape[1]
    mask = _mha_mask(mask, b, heads, t, s)
    q = _grouped_heads(_project(x, params["w_q"]), heads)
    k, v = (_split_heads(_project(c, params[w]), heads) for w in ("w_k", "w_v"))
    p = _probabilities(q, k, causal, mask)
    out = _merge_heads(jnp.einsum("...hgij,...hjd->...hgid", p, v)[:, :, 0])
    out = out.reshape(b * t, d_model)
    dy_rows = dy.reshape(b * t, d_model)
    dout = _grouped_heads((dy_rows @ params["w_o"].T).reshape(b, t, d_model), heads)
    dq, dk, dv = _backward_from_probabilities(q, k, v, p, dout)
    dq = _merge_heads(dq[:, :, 0]).reshape(b * t, d_model)
    dk, dv = (_merge_heads(g).reshape(b * s, d_model) for g in (dk, dv))
    x_rows, c_rows = x.reshape(b * t, d_model), c.reshape(b * s, d_model)
    dparams = {"w_q": x_rows.T @ dq, "w_k": c_rows.T @ dk, "w_v": c_rows.T @ dv,
               "w_o": out.T @ dy_rows}
    if context is None:  # x feeds all three projections
        dx = dq @ params["w_q"].T + dk @ params["w_k"].T + dv @ params["w_v"].T
        return dparams, dx.reshape(b, t, d_model)
    dc = dk @ params["w_k"].T + dv @ params["w_v"].T
    return dparams, (dq @ params["w_q"].T).reshape(b, t, d_model), dc.reshape(b, s, d_model)
