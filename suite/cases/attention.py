"""Attention cases: scaled dot-product and multi-head attention against jax.vjp.

Oracles: jax.vjp of ``manual.attention.forward`` (softmax(q kᵀ / sqrt(d)) v, the
causal mask as -inf scores) and of ``manual.attention.mha_forward``, each with the
finite-difference witness on <dout, out>. The hand-derived side never forms a (T, T)
Jacobian per row (dS = P ⊙ (dP - rowsum(dP ⊙ P))); the causal entries of P and dS are
exactly 0 by construction.

Edge cases: T = 1 (P = 1: dq = dk = 0 exactly and dv = dout), one head, d = 1, causal
and not; for multi-head attention also heads = D (d = 1 per head). Inputs: q, k, v
standard normal, so the scores are ~N(0, 1) and the softmax neither saturates nor
flattens; MHA weights ~ N(0, 1/D) give the projections the same scale.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from manual import attention
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["sdpa_builder", "mha_builder", "sdpa_case", "mha_case", "SDPA", "MHA",
           "plain_attention", "plain_mha", "general_builder", "general_case", "GENERAL",
           "cross_builder", "cross_case", "CROSS"]

register_family(Family(
    name="attention",
    title="Scaled dot-product and multi-head attention",
    description="out = softmax(q kᵀ / sqrt(d)) v per batch entry and head, optionally "
                "causal (masked scores -inf, probability exactly 0). dv = Pᵀ dout, "
                "dP = dout vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)) — the softmax's "
                "Jacobian-vector product, no (T, T) Jacobian per row — then dq = dS k / "
                "sqrt(d), dk = dSᵀ q / sqrt(d) (Vaswani et al. 2017; the FlashAttention "
                "backward). `attention/mha/...`: multi-head attention x -> (x W_q, x W_k, "
                "x W_v) split into heads -> attention -> merged W_o, with dx summing the "
                "three projections. Against jax.vjp of manual.attention.forward and "
                "mha_forward, with the finite-difference witness. `attention/general/...` "
                "and `attention/mha/cross/...`: cross-attention (Tq ≠ Tk), grouped-query "
                "heads (dk, dv summed over the query heads sharing a key/value head), "
                "broadcast batch axes (gradients summed over them), boolean and additive "
                "masks (−∞ before the softmax, not differentiated), fully masked rows "
                "(zeros); against jax.vjp of a plain-jnp forward (jnp.repeat for the "
                "grouped heads, a where-guarded softmax).",
))


def _normals(rng, shapes, dtype):
    return {k: jnp.asarray((scale * rng.standard_normal(shape)).astype(dtype))
            for k, (shape, scale) in shapes.items()}


def sdpa_builder(b, h, t, d):
    """q, k, v, dout: (B, heads, T, d), standard normal."""
    def build(key, dtype):
        shape = (b, h, t, d)
        return _normals(numpy_rng(key), {k: (shape, 1.0) for k in ("q", "k", "v", "dout")},
                        dtype)
    return build


def mha_builder(b, t, d_model):
    """params (D, D) ~ N(0, 1/D), x and dy (B, T, D) standard normal."""
    def build(key, dtype):
        scale = d_model ** -0.5
        x = _normals(numpy_rng(key), dict(w_q=((d_model, d_model), scale),
                                          w_k=((d_model, d_model), scale),
                                          w_v=((d_model, d_model), scale),
                                          w_o=((d_model, d_model), scale),
                                          x=((b, t, d_model), 1.0), dy=((b, t, d_model), 1.0)),
                     dtype)
        params = {k: x.pop(k) for k in attention.PARAM_NAMES}
        return dict(params=params, **x)
    return build


def sdpa_case(name, b, h, t, d, *, causal=False, tier="test", **kwargs):
    return vjp_case(name=name, family="attention", build=sdpa_builder(b, h, t, d),
                    forward=functools.partial(attention.forward, causal=causal),
                    backward=functools.partial(attention.backward, causal=causal),
                    primals=("q", "k", "v"), cotangent="dout",
                    sizes=dict(B=b, heads=h, T=t, d=d, causal=causal), tier=tier, **kwargs)


def mha_case(name, b, t, d_model, heads, *, causal=False, tier="test", **kwargs):
    return vjp_case(name=name, family="attention", build=mha_builder(b, t, d_model),
                    forward=functools.partial(attention.mha_forward, heads=heads,
                                              causal=causal),
                    backward=functools.partial(attention.mha_backward, heads=heads,
                                               causal=causal),
                    primals=("params", "x"),
                    sizes=dict(B=b, T=t, D=d_model, heads=heads, causal=causal), tier=tier,
                    **kwargs)


# (label, B, heads, T, d, causal, tier): "test" has the causal mask (here), T = 1 and the
# unmasked softmax (here and in multi-head attention); the rest of the edge cases and the
# larger shapes are "slow" and "report".
SDPA = (
    ("B2-H3-T5-d4", 2, 3, 5, 4, False, "slow"),
    ("B2-H3-T5-d4-causal", 2, 3, 5, 4, True, "test"),
    ("T1-causal", 2, 2, 1, 4, True, "slow"),
    ("T1", 2, 2, 1, 4, False, "test"),
    ("H1-causal", 2, 1, 6, 4, True, "slow"),
    ("d1", 1, 2, 7, 1, False, "slow"),
    ("d1-causal", 1, 2, 7, 1, True, "slow"),
    ("B1-H2-T33-d16-causal", 1, 2, 33, 16, True, "slow"),
    ("B4-H4-T128-d32", 4, 4, 128, 32, False, "report"),
    ("B4-H4-T128-d32-causal", 4, 4, 128, 32, True, "report"),
)

# (label, B, T, D, heads, causal, tier)
MHA = (
    ("B2-T5-D8-H2", 2, 5, 8, 2, False, "test"),
    ("B2-T5-D8-H2-causal", 2, 5, 8, 2, True, "slow"),
    ("B2-T5-D8-H1", 2, 5, 8, 1, False, "slow"),
    ("B2-T1-D8-H2", 2, 1, 8, 2, False, "slow"),
    ("B1-T4-D6-H6-causal", 1, 4, 6, 6, True, "slow"),
    ("B4-T64-D128-H8-causal", 4, 64, 128, 8, True, "report"),
)

for label, b, h, t, d, causal, tier in SDPA:
    register(sdpa_case(f"attention/{label}", b, h, t, d, causal=causal, tier=tier))
for label, b, t, d_model, heads, causal, tier in MHA:
    register(mha_case(f"attention/mha/{label}", b, t, d_model, heads, causal=causal, tier=tier))

# The benchmark of the issue, B=8, heads=8, T=512, d=64, both masks; multi-head attention
# at a modest shape. Manual backward vs jax.vjp of the same forward, both compiled.
for causal in (False, True):
    register(sdpa_case(f"attention/bench-B8-H8-T512-d64{'-causal' if causal else ''}",
                       8, 8, 512, 64, causal=causal, tier="bench"))
register(mha_case("attention/mha/bench-B8-T128-D512-H8-causal", 8, 128, 512, 8, causal=True,
                  tier="bench"))


# --- the general forms: cross-attention, masks, grouped heads, broadcast batch axes --------
#
# The oracle shares no line with manual/: the grouped heads are jnp.repeat-ed (query head h
# reads key/value head h // G), the batch axes broadcast through jnp.matmul, and the softmax
# is guarded with where (a row with every key masked gives P = 0, not NaN). The
# max-subtraction is a stop_gradient shift (softmax is shift-invariant), as jax.nn.softmax.

def plain_attention(q, k, v, mask=None, *, causal=False, scale=None):
    """softmax(scale q kᵀ, masked) v in plain jnp, the oracle of the general cases."""
    group = q.shape[-3] // k.shape[-3]
    k, v = jnp.repeat(k, group, axis=-3), jnp.repeat(v, group, axis=-3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * scale
    allowed = jnp.ones(s.shape, bool)
    if mask is not None and mask.dtype == jnp.bool_:
        allowed = allowed & jnp.broadcast_to(mask, s.shape)
    elif mask is not None:
        s = s + jnp.broadcast_to(mask, s.shape)
    if causal:
        tq, tk = s.shape[-2:]
        allowed = allowed & jnp.broadcast_to(jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None],
                                             s.shape)
    s = jnp.where(allowed, s, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)
    return jnp.matmul(p, v)


def _mask(rng, shape, kind, dtype, masked_rows):
    """A boolean mask (True with probability 0.7) or an additive one (N(0, 1), -inf with
    probability 0.3); the first ``masked_rows`` query rows have every key masked."""
    if kind is None:
        return None
    keep = rng.random(shape) < 0.7
    keep[..., :masked_rows, :] = False
    if kind == "bool":
        return jnp.asarray(keep)
    return jnp.asarray(np.where(keep, rng.standard_normal(shape), -np.inf).astype(dtype))


def general_builder(q_shape, k_shape, v_shape, mask_shape=None, mask_kind=None, masked_rows=0):
    """q, k, v, dout standard normal; the mask as ``_mask``."""
    def build(key, dtype):
        rng = numpy_rng(key)
        q, k, v = (jnp.asarray(rng.standard_normal(s).astype(dtype))
                   for s in (q_shape, k_shape, v_shape))
        batch = np.broadcast_shapes(q_shape[:-3], k_shape[:-3], v_shape[:-3])
        dout = jnp.asarray(rng.standard_normal(batch + q_shape[-3:-1] + v_shape[-1:])
                           .astype(dtype))
        return dict(q=q, k=k, v=v, dout=dout,
                    mask=_mask(rng, mask_shape, mask_kind, dtype, masked_rows))
    return build


def general_case(name, q_shape, k_shape, v_shape, *, mask_shape=None, mask_kind=None,
                 masked_rows=0, causal=False, scale=None, tier="test", **kwargs):
    def fwd(q, k, v, mask):
        return plain_attention(q, k, v, mask, causal=causal, scale=scale)

    def bwd(q, k, v, mask, dout):
        return attention.backward(q, k, v, dout, causal=causal, mask=mask, scale=scale)

    sizes = dict(q="x".join(map(str, q_shape)), k="x".join(map(str, k_shape)),
                 v="x".join(map(str, v_shape)), causal=causal)
    if mask_kind:
        sizes.update(mask=f"{mask_kind} " + "x".join(map(str, mask_shape)))
    if masked_rows:
        sizes.update(masked_rows=masked_rows)
    if scale is not None:
        sizes.update(scale=scale)
    return vjp_case(name=name, family="attention",
                    build=general_builder(q_shape, k_shape, v_shape, mask_shape, mask_kind,
                                          masked_rows),
                    forward=fwd, backward=bwd, primals=("q", "k", "v"),
                    arguments=("q", "k", "v", "mask"), cotangent="dout", sizes=sizes,
                    tier=tier, **kwargs)


# (label, q, k, v shapes, keywords, tier). "test": one case with every form at once —
# broadcast batch axes, grouped heads (Hq 4, Hk 2), cross-attention with Tq < Tk, causal,
# an additive mask holding -inf with a fully masked row, a custom scale (a boolean mask is
# that additive mask's special case: test_attention.py checks the two agree exactly).
# "slow": each form on its own, and a boolean mask.
GENERAL = (
    ("broadcast-gqa-cross-additive-causal-masked-row", (2, 1, 4, 6, 4), (1, 3, 2, 9, 4),
     (1, 3, 2, 9, 5),
     dict(mask_shape=(6, 9), mask_kind="float", masked_rows=1, causal=True, scale=0.3), "test"),
    ("cross-gqa-bool-masked-row", (2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6),
     dict(mask_shape=(2, 1, 5, 7), mask_kind="bool", masked_rows=1), "slow"),
    ("cross-Tq7-Tk3", (2, 2, 7, 4), (2, 2, 3, 4), (2, 2, 3, 4), {}, "slow"),
    ("cross-Tq7-Tk3-causal", (2, 2, 7, 4), (2, 2, 3, 4), (2, 2, 3, 4), dict(causal=True),
     "slow"),
    ("cross-Tq3-Tk7-causal", (2, 2, 3, 4), (2, 2, 7, 4), (2, 2, 7, 4), dict(causal=True),
     "slow"),
    ("mqa-Hk1", (2, 6, 5, 4), (2, 1, 5, 4), (2, 1, 5, 4), {}, "slow"),
    ("gqa-causal", (1, 6, 8, 4), (1, 3, 8, 4), (1, 3, 8, 4), dict(causal=True), "slow"),
    ("bool-mask-causal-masked-rows", (2, 2, 6, 4), (2, 2, 6, 4), (2, 2, 6, 4),
     dict(mask_shape=(2, 2, 6, 6), mask_kind="bool", masked_rows=2, causal=True), "slow"),
    ("additive-mask-masked-row", (2, 2, 5, 4), (2, 2, 8, 4), (2, 2, 8, 4),
     dict(mask_shape=(2, 1, 1, 8), mask_kind="float", masked_rows=0), "slow"),
    ("padding-mask-all-keys-masked", (2, 2, 4, 4), (2, 2, 6, 4), (2, 2, 6, 4),
     dict(mask_shape=(2, 2, 4, 6), mask_kind="float", masked_rows=4), "slow"),
    ("rank3", (3, 5, 4), (3, 7, 4), (3, 7, 2), {}, "slow"),
    ("broadcast-k-v", (3, 2, 5, 4), (2, 5, 4), (1, 2, 5, 4), dict(causal=True), "slow"),
    ("B4-Hq8-Hk2-Tq64-Tk128-d32-bool", (4, 8, 64, 32), (4, 2, 128, 32), (4, 2, 128, 32),
     dict(mask_shape=(4, 1, 1, 128), mask_kind="bool"), "report"),
)

for label, q_shape, k_shape, v_shape, kw, tier in GENERAL:
    register(general_case(f"attention/general/{label}", q_shape, k_shape, v_shape, tier=tier,
                          **kw))


def plain_mha(params, x, *, heads, causal=False, mask=None, context=None):
    """Multi-head attention in plain jnp over ``plain_attention``."""
    c = x if context is None else context

    def split(z):
        b, t, d = z.shape
        return z.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)

    out = plain_attention(split(x @ params["w_q"]), split(c @ params["w_k"]),
                          split(c @ params["w_v"]), mask, causal=causal)
    b, h, t, d = out.shape
    return out.transpose(0, 2, 1, 3).reshape(b, t, h * d) @ params["w_o"]


def cross_builder(b, t, s, d_model, mask_shape=None, mask_kind=None, masked_rows=0):
    """mha_builder's params, x and dy, a context (B, S, D) when s, and the mask."""
    base = mha_builder(b, t, d_model)

    def build(key, dtype):
        inputs = base(key, dtype)
        rng = numpy_rng(key)
        rng.standard_normal(1)  # a stream of its own after mha_builder's draws
        if s is not None:
            inputs["context"] = jnp.asarray(rng.standard_normal((b, s, d_model)).astype(dtype))
        inputs["mask"] = _mask(rng, mask_shape, mask_kind, dtype, masked_rows)
        return inputs
    return build


def cross_case(name, b, t, s, d_model, heads, *, mask_shape=None, mask_kind=None,
               masked_rows=0, causal=False, tier="test", **kwargs):
    """Multi-head cross-attention (s: the context's length) or self-attention with a mask
    (s None), against jax.vjp of ``plain_mha``."""
    if s is None:
        def fwd(params, x, mask):
            return plain_mha(params, x, heads=heads, causal=causal, mask=mask)

        def bwd(params, x, mask, dy):
            return attention.mha_backward(params, x, dy, heads=heads, causal=causal, mask=mask)
        primals, arguments = ("params", "x"), ("params", "x", "mask")
    else:
        def fwd(params, x, context, mask):
            return plain_mha(params, x, heads=heads, causal=causal, mask=mask, context=context)

        def bwd(params, x, context, mask, dy):
            return attention.mha_backward(params, x, dy, heads=heads, causal=causal, mask=mask,
                                          context=context)
        primals, arguments = ("params", "x", "context"), ("params", "x", "context", "mask")
    sizes = dict(B=b, T=t, S=s if s is not None else t, D=d_model, heads=heads, causal=causal)
    if mask_kind:
        sizes.update(mask=f"{mask_kind} " + "x".join(map(str, mask_shape)))
    return vjp_case(name=name, family="attention",
                    build=cross_builder(b, t, s, d_model, mask_shape, mask_kind, masked_rows),
                    forward=fwd, backward=bwd, primals=primals, arguments=arguments,
                    sizes=sizes, tier=tier, **kwargs)


# (label, B, T, S (None: self-attention), D, heads, keywords, tier)
CROSS = (
    ("B2-T4-S6-D8-H2-bool", 2, 4, 6, 8, 2,
     dict(mask_shape=(2, 1, 1, 6), mask_kind="bool"), "test"),
    ("B2-T5-S3-D8-H2-causal", 2, 5, 3, 8, 2, dict(causal=True), "slow"),
    ("B2-T4-S6-D8-H4-additive-masked-row", 2, 4, 6, 8, 4,
     dict(mask_shape=(2, 4, 4, 6), mask_kind="float", masked_rows=1), "slow"),
    ("self-B2-T5-D8-H2-padding", 2, 5, None, 8, 2,
     dict(mask_shape=(2, 1, 1, 5), mask_kind="bool"), "slow"),
    ("B4-T64-S96-D128-H8-bool", 4, 64, 96, 128, 8,
     dict(mask_shape=(4, 1, 1, 96), mask_kind="bool"), "report"),
)

for label, b, t, s, d_model, heads, kw, tier in CROSS:
    register(cross_case(f"attention/mha/cross/{label}", b, t, s, d_model, heads, tier=tier,
                        **kw))

# Benchmarks of the general forms: a decoder's grouped-query cross-attention with a padding
# mask, and multi-head cross-attention; manual backward vs jax.vjp of the plain forward.
register(general_case("attention/general/bench-B8-Hq8-Hk2-Tq256-Tk512-d64-padding",
                      (8, 8, 256, 64), (8, 2, 512, 64), (8, 2, 512, 64),
                      mask_shape=(8, 1, 1, 512), mask_kind="bool", tier="bench"))
register(cross_case("attention/mha/cross/bench-B8-T128-S256-D512-H8-padding", 8, 128, 256, 512,
                    8, mask_shape=(8, 1, 1, 256), mask_kind="bool", tier="bench"))
