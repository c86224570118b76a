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

import jax.numpy as jnp

from manual import attention
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["sdpa_builder", "mha_builder", "sdpa_case", "mha_case", "SDPA", "MHA"]

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
                "mha_forward, with the finite-difference witness.",
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
