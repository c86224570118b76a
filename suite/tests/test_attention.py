"""manual.attention beyond the registry: the forward against a numpy loop, what the causal
mask does to the gradient, no (T, T) Jacobian per row, planted bugs, bad input.

The planted bugs live in a plain numpy backward (``np_backward``): right, it agrees with
the autodiff oracle to float64 tolerance; with each classic mistake (the scale applied
twice or not at all, the causal mask off by one, the softmax Jacobian without its
rank-one term, dk from dS instead of dSᵀ), the suite's comparison fails it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import attention
from suite import cases as registry
from suite import compare as cmp

CAUSAL, MHA = "attention/B2-H3-T5-d4-causal", "attention/mha/B2-T5-D8-H2"


def np_probabilities(q, k, causal, *, scale=None, offset=0):
    """softmax(q kᵀ scale) per (batch, head), masking keys j > i + offset when causal."""
    t, d = q.shape[2], q.shape[3]
    s = np.einsum("bhid,bhjd->bhij", q, k) * (d ** -0.5 if scale is None else scale)
    if causal:
        s = np.where(np.arange(t)[None, :] <= np.arange(t)[:, None] + offset, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_forward(q, k, v, causal):
    """The definition, one query at a time (shares no code with manual/)."""
    b, h, t, d = q.shape
    out = np.zeros_like(q)
    for i in range(t):
        keys = slice(0, i + 1) if causal else slice(0, t)
        s = np.einsum("bhd,bhjd->bhj", q[:, :, i], k[:, :, keys]) / np.sqrt(d)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, i] = np.einsum("bhj,bhjd->bhd", p / p.sum(-1, keepdims=True), v[:, :, keys])
    return out


def np_backward(q, k, v, dout, causal, bug=None):
    """The attention backward in numpy, with switches for the classic mistakes."""
    q, k, v, dout = (np.asarray(a, np.float64) for a in (q, k, v, dout))
    d = q.shape[3]
    forward_scale = d ** -0.5
    back_scale = {"scale_twice": d ** -1.0, "no_scale": 1.0}.get(bug, d ** -0.5)
    offset = 1 if bug == "causal_mask_off_by_one" else 0   # query i also sees key i + 1
    p = np_probabilities(q, k, causal, scale=forward_scale, offset=offset)
    dv = np.einsum("bhij,bhid->bhjd", p, dout)
    dp = np.einsum("bhid,bhjd->bhij", dout, v)
    rowsum = 0.0 if bug == "no_rank_one_term" else (dp * p).sum(-1, keepdims=True)
    ds = p * (dp - rowsum) * back_scale
    dq = np.einsum("bhij,bhjd->bhid", ds, k)
    dk = np.einsum("bhij,bhjd->bhid" if bug == "dk_from_ds_untransposed" else "bhij,bhid->bhjd",
                   ds, q)
    return dq, dk, dv


@functools.lru_cache(maxsize=None)
def _case(name):
    """(inputs, oracle) of a registered case in float64, the oracle compiled once."""
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, jax.tree_util.tree_map(np.asarray, jax.jit(case.reference)(inputs))


def _judge(out, reference):
    return cmp.compare(tuple(out), tuple(reference), "float64")


def _args(inputs):
    return tuple(inputs[k] for k in ("q", "k", "v", "dout"))


def test_numpy_backward_agrees_with_autodiff():
    inputs, reference = _case(CAUSAL)
    assert _judge(np_backward(*_args(inputs), causal=True), reference).passed


@pytest.mark.parametrize("bug", ["scale_twice", "no_scale", "causal_mask_off_by_one",
                                 "no_rank_one_term", "dk_from_ds_untransposed"])
def test_planted_bug_fails(bug):
    inputs, reference = _case(CAUSAL)
    out = np_backward(*_args(inputs), causal=True, bug=bug)
    assert not _judge(out, reference).passed, f"{bug} was not caught"


def np_mha_backward(params, x, dy, heads, bug=None):
    """Multi-head attention's backward in numpy (np_backward per head), with switches."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    b, t, dm = x.shape
    rows = x.reshape(b * t, dm)

    def split(z):
        return z.reshape(b, t, heads, dm // heads).transpose(0, 2, 1, 3)

    def merge(z):
        return z.transpose(0, 2, 1, 3).reshape(b * t, dm)

    q, k, v = (split(rows @ w[name]) for name in ("w_q", "w_k", "w_v"))
    out = merge(np.einsum("bhij,bhjd->bhid", np_probabilities(q, k, False), v))
    dout = split(dy.reshape(b * t, dm) @ w["w_o"].T)
    dq, dk, dv = (merge(g) for g in np_backward(q, k, v, dout, causal=False))
    dparams = {"w_q": rows.T @ dq, "w_k": rows.T @ dk, "w_v": rows.T @ dv,
               "w_o": out.T @ dy.reshape(b * t, dm)}
    dx = dq @ w["w_q"].T
    if bug != "dx_through_w_q_only":  # x feeds three projections
        dx = dx + dk @ w["w_k"].T + dv @ w["w_v"].T
    return dparams, dx.reshape(b, t, dm)


def test_planted_multi_head_bugs_fail():
    inputs, reference = _case(MHA)
    args = (inputs["params"], inputs["x"], inputs["dy"])
    assert _judge(np_mha_backward(*args, heads=2), reference).passed
    assert not _judge(np_mha_backward(*args, heads=2, bug="dx_through_w_q_only"),
                      reference).passed
    # the heads ignored: one softmax over all D features, scaled by 1/sqrt(D)
    assert not _judge(np_mha_backward(*args, heads=1), reference).passed


@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_the_definition(causal):
    inputs, _ = _case(CAUSAL)
    q, k, v, _ = _args(inputs)
    out = jax.jit(functools.partial(attention.forward, causal=causal))(q, k, v)
    np.testing.assert_allclose(out, np_forward(*map(np.asarray, (q, k, v)), causal),
                               rtol=1e-12, atol=1e-13)


def test_causal_mask_is_exact_in_both_directions():
    # Query 0 sees key 0 only: its output is v_0 exactly. A cotangent on query i alone
    # reaches the values j <= i and nothing after them, exactly; the keys j <= i too,
    # except for i = 0, whose softmax over one key is constant (dk = 0 exactly).
    inputs, _ = _case(CAUSAL)
    q, k, v, dout = _args(inputs)
    t = q.shape[2]
    out = attention.forward(q, k, v, causal=True)
    np.testing.assert_array_equal(out[:, :, 0], v[:, :, 0])
    for i in range(t):
        only_i = jnp.zeros_like(dout).at[:, :, i].set(dout[:, :, i])
        dq, dk, dv = attention.backward(q, k, v, only_i, causal=True)
        def reached(g):
            return (np.abs(np.asarray(g)).sum(axis=(0, 1, 3)) > 0).tolist()
        assert reached(dv) == [j <= i for j in range(t)]
        assert reached(dk) == [0 < i and j <= i for j in range(t)]
        assert reached(dq) == [0 < i and j == i for j in range(t)]


def test_backward_never_forms_a_jacobian_per_row():
    # The largest intermediate of the traced backward is a (B, heads, T, T) array: no
    # (T, T) Jacobian per row, i.e. nothing with B·heads·T³ entries.
    b, h, t, d = 2, 2, 16, 4
    spec = jax.ShapeDtypeStruct((b, h, t, d), jnp.float32)
    jaxpr = jax.make_jaxpr(functools.partial(attention.backward, causal=True))(
        spec, spec, spec, spec)
    sizes = [int(np.prod(var.aval.shape)) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
    assert max(sizes) == b * h * t * t


def test_dtype_is_preserved():
    spec = jax.ShapeDtypeStruct((1, 2, 3, 4), jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in
               jax.eval_shape(attention.backward, spec, spec, spec, spec))
    params = {k: jax.ShapeDtypeStruct((8, 8), jnp.float32) for k in attention.PARAM_NAMES}
    x = jax.ShapeDtypeStruct((2, 3, 8), jnp.float32)
    out = jax.eval_shape(functools.partial(attention.mha_backward, heads=4), params, x, x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))


def _mha_good():
    params = {k: jnp.ones((8, 8)) for k in attention.PARAM_NAMES}
    return params, jnp.ones((2, 3, 8)), jnp.ones((2, 3, 8))


@pytest.mark.parametrize("heads, pattern", [
    (3, r"heads must divide D: heads=3 does not divide D = 8 of x \(2, 3, 8\)"),
    (0, r"heads must be a positive int, got 0"),
    (2.0, r"heads must be a positive int, got 2.0"),
    (True, r"heads must be a positive int, got True"),
])
def test_bad_heads_is_a_value_error(heads, pattern):
    params, x, dy = _mha_good()
    with pytest.raises(ValueError, match=pattern):
        attention.mha_forward(params, x, heads=heads)
    with pytest.raises(ValueError, match=pattern):
        attention.mha_backward(params, x, dy, heads=heads)


@pytest.mark.parametrize("change, pattern", [
    (dict(w_o=np.ones((8, 4))),
     r"params\['w_o'\] must have shape \(D, D\) = \(8, 8\).*got \(8, 4\)"),
    (dict(x=np.ones((2, 8))), r"x must have rank 3"),
    (dict(dy=np.ones((2, 4, 8))), r"dy must have the shape of y, \(B, T, D\) = \(2, 3, 8\)"),
    (dict(w_k=None), r"params must be a dict with keys \('w_q', 'w_k', 'w_v', 'w_o'\)"),
])
def test_bad_mha_input_is_a_value_error(change, pattern):
    params, x, dy = _mha_good()
    params = {k: v for k, v in params.items() if change.get(k, 0) is not None}
    params.update({k: jnp.asarray(v) for k, v in change.items()
                   if k.startswith("w_") and v is not None})
    x = jnp.asarray(change.get("x", x))
    dy = jnp.asarray(change.get("dy", dy))
    with pytest.raises(ValueError, match=pattern):
        attention.mha_backward(params, x, dy, heads=2)


@pytest.mark.parametrize("shapes, pattern", [
    (((1, 2, 3, 4), (1, 2, 5, 3), (1, 2, 5, 4)),
     r"k must have the last axis d of q, \(..., heads, T, d\) = \(1, 2, 3, 4\), "
     r"got \(1, 2, 5, 3\)"),
    (((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 4, 4)), r"v must have the heads and T of k"),
    (((1, 2, 3, 4), (1, 2, 3, 4), (3, 4)), r"v must have rank >= 3"),
    (((1, 2, 0, 4), (1, 2, 0, 4), (1, 2, 0, 4)), r"q must have T >= 1 and d >= 1"),
    (((1, 3, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4)),
     r"the heads of q must be a multiple of those of k and v .*Hq = 3 .*Hk = 2"),
    (((2, 2, 3, 4), (3, 2, 3, 4), (3, 2, 3, 4)), r"the leading \(batch\) axes of q, k and v"),
])
def test_bad_attention_input_is_a_value_error(shapes, pattern):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=pattern):
        attention.forward(q, k, v)
    with pytest.raises(ValueError, match="causal must be a bool"):
        attention.forward(*(jnp.ones((1, 1, 2, 2)),) * 3, causal="yes")


@pytest.mark.parametrize("keywords, pattern", [
    (dict(mask=jnp.ones((3, 2), bool)), r"mask must broadcast to the scores \(..., Hq, Tq, Tk\) "
                                         r"= \(1, 4, 2, 3\), got shape \(3, 2\)"),
    (dict(mask=jnp.ones((2, 1, 4, 2, 3), bool)), r"mask must broadcast to the scores"),
    (dict(mask=jnp.ones((2, 3), jnp.int32)), r"mask must be boolean \(True = attend\) or an "
                                              r"additive float array, got .* int32"),
    (dict(scale="big"), r"scale must be a real number or None \(1/sqrt\(d\)\), got 'big'"),
    (dict(scale=float("nan")), r"scale must be finite, got nan"),
    (dict(dout=jnp.ones((1, 4, 3, 5))), r"dout must have the shape of out, \(..., Hq, Tq, dv\) = "
                                        r"\(1, 4, 2, 5\), got \(1, 4, 3, 5\)"),
])
def test_bad_mask_scale_dout_is_a_value_error(keywords, pattern):
    q, k, v = jnp.ones((1, 4, 2, 8)), jnp.ones((1, 2, 3, 8)), jnp.ones((1, 2, 3, 5))
    dout = keywords.pop("dout", jnp.ones((1, 4, 2, 5)))
    with pytest.raises(ValueError, match=pattern):
        attention.backward(q, k, v, dout, **keywords)
    if np.shape(dout) == (1, 4, 2, 5):
        with pytest.raises(ValueError, match=pattern):
            attention.forward(q, k, v, **keywords)


def test_bad_context_and_mha_mask_are_value_errors():
    params, x, dy = _mha_good()
    with pytest.raises(ValueError, match=r"context must have shape \(B, S, D\) = \(2, S, 8\) "
                                         r"with S >= 1 for x \(2, 3, 8\), got \(2, 5, 4\)"):
        attention.mha_backward(params, x, dy, heads=2, context=jnp.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"context must have rank 3"):
        attention.mha_forward(params, x, heads=2, context=jnp.ones((5, 8)))
    with pytest.raises(ValueError, match=r"mask must broadcast to the scores \(..., Hq, Tq, Tk\) "
                                         r"= \(2, 2, 3, 5\), got shape \(3, 3\)"):
        attention.mha_forward(params, x, heads=2, context=jnp.ones((2, 5, 8)),
                              mask=jnp.ones((3, 3), bool))


# --- the general forms: grouped heads, broadcast axes, masks, cross-attention ------------

GENERAL = "attention/general/broadcast-gqa-cross-additive-causal-masked-row"  # make test's
BOOL = "attention/general/cross-gqa-bool-masked-row"                          # slow tier


def np_general_backward(q, k, v, dout, mask=None, causal=False, scale=None, bug=None):
    """The general backward in numpy, one (batch, head) at a time, with switches for the
    classic mistakes of the general forms (shares no code with manual/)."""
    q, k, v, dout = (np.asarray(a, np.float64) for a in (q, k, v, dout))
    batch = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
    hq, tq, d = q.shape[-3:]
    hk, tk = k.shape[-3:-1]
    scale = d ** -0.5 if scale is None else scale
    qb, kb, vb = (np.broadcast_to(a, batch + a.shape[-3:]) for a in (q, k, v))
    bias = np.zeros(batch + (hq, tq, tk))
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask), bias.shape)
        bias = np.where(m, 0.0, -np.inf) if m.dtype == bool else bias + m
    if causal:
        offset = {"causal_bottom_right": tk - tq}.get(bug, 0)
        bias = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + offset, bias, -np.inf)
    dq, dk, dv = np.zeros(qb.shape), np.zeros(kb.shape), np.zeros(vb.shape)
    for idx in np.ndindex(*batch):
        for h in range(hq):
            c = h // (hq // hk)
            if bug == "group_not_summed" and h % (hq // hk):
                continue        # only the first query head of a group reaches k and v
            s = qb[idx][h] @ kb[idx][c].T * scale + (0 if bug == "mask_ignored" else bias[idx][h])
            rows = np.isfinite(s).any(-1)
            e = np.exp(s - np.where(rows, s.max(-1), 0.0)[:, None])
            p = e / np.where(rows, e.sum(-1), 1.0)[:, None]
            if bug == "masked_row_uniform":
                p[~rows] = 1.0 / tk
            g = dout[idx][h]
            dv[idx][c] += p.T @ g
            dp = g @ vb[idx][c].T
            ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
            dq[idx][h] = ds @ kb[idx][c]
            dk[idx][c] += ds.T @ qb[idx][h]

    def reduce_to(g, shape):
        if bug == "broadcast_not_summed":
            return g[(0,) * (g.ndim - len(shape))].reshape(-1)[:int(np.prod(shape))].reshape(shape)
        g = g.sum(tuple(range(g.ndim - len(shape))))
        return g.sum(tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)
    return reduce_to(dq, q.shape), reduce_to(dk, k.shape), reduce_to(dv, v.shape)


def _general_args(name):
    inputs, reference = _case(name)
    case = registry.get(name)
    causal, scale = case.sizes["causal"], case.sizes.get("scale")
    return (inputs["q"], inputs["k"], inputs["v"], inputs["dout"], inputs["mask"], causal,
            scale), reference


@pytest.mark.parametrize("name", [GENERAL, pytest.param(BOOL, marks=pytest.mark.slow)])
def test_numpy_general_backward_agrees_with_autodiff(name):
    args, reference = _general_args(name)
    assert _judge(np_general_backward(*args), reference).passed


@pytest.mark.parametrize("bug", ["group_not_summed", "mask_ignored", "masked_row_uniform",
                                 "broadcast_not_summed", "causal_bottom_right"])
def test_planted_general_bug_fails(bug):
    args, reference = _general_args(GENERAL)
    assert not _judge(np_general_backward(*args, bug=bug), reference).passed, f"{bug} not caught"


def _general_inputs():
    inputs, _ = _case(GENERAL)
    return tuple(inputs[n] for n in ("q", "k", "v", "dout", "mask"))


@functools.partial(jax.jit, static_argnames="only_row0")
def _masked_run(q, k, v, dout, mask, only_row0=False):
    if only_row0:
        dout = jnp.zeros_like(dout).at[..., 0, :].set(dout[..., 0, :])
    kw = dict(mask=mask, causal=True, scale=0.3)
    return attention.forward(q, k, v, **kw), attention.backward(q, k, v, dout, **kw)


def test_a_fully_masked_row_gives_zeros_exactly():
    q, k, v, dout, mask = _general_inputs()       # query row 0 has every key masked
    assert not bool(jnp.isfinite(mask[0]).any())
    out, (dq, dk, dv) = _masked_run(q, k, v, dout, mask)
    np.testing.assert_array_equal(out[..., 0, :], 0.0)
    np.testing.assert_array_equal(dq[..., 0, :], 0.0)
    _, grads = _masked_run(q, k, v, dout, mask, only_row0=True)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)
    assert all(bool(jnp.isfinite(g).all()) for g in (out, dq, dk, dv))


@jax.jit
def _grouped_and_repeated(q, k, v, dout, mask):
    group = q.shape[-3] // k.shape[-3]
    kr, vr = jnp.repeat(k, group, axis=-3), jnp.repeat(v, group, axis=-3)
    both = [(attention.forward(q, a, b, mask=mask), attention.backward(q, a, b, dout, mask=mask))
            for a, b in ((k, v), (kr, vr))]
    additive = jnp.where(jnp.isfinite(mask), 0.0, -jnp.inf)
    masks = [attention.backward(q, k, v, dout, mask=m, causal=True)
             for m in (jnp.isfinite(mask), additive)]
    return both, masks


def test_grouped_heads_equal_repeated_heads_and_boolean_masks_their_additive_form():
    # query head h reads key/value head h // G: the same as repeating k and v G times,
    # with dk, dv the sums over each group; a boolean mask is the additive mask with 0
    # where True and -inf where False, exactly
    q, k, v, dout, mask = _general_inputs()
    ((out, (_, dk, dv)), (out_r, (_, dkr, dvr))), (with_bool, with_additive) = (
        _grouped_and_repeated(q, k, v, dout, mask))
    np.testing.assert_allclose(out, out_r, rtol=1e-13, atol=1e-14)
    hk, group = k.shape[-3], q.shape[-3] // k.shape[-3]
    for g, gr, x in ((dk, dkr, k), (dv, dvr, v)):
        summed = np.asarray(gr).reshape(gr.shape[:-3] + (hk, group) + gr.shape[-2:]).sum(-3)
        np.testing.assert_allclose(g, summed.reshape(x.shape), rtol=1e-12, atol=1e-13)
    for a, b in zip(with_bool, with_additive, strict=True):
        np.testing.assert_array_equal(a, b)


@jax.jit
def _self_and_cross(params, x, dy):
    return (attention.mha_backward(params, x, dy, heads=2, causal=True),
            attention.mha_backward(params, x, dy, heads=2, causal=True, context=x),
            attention.mha_forward(params, x, heads=2, context=x, causal=True),
            attention.mha_forward(params, x, heads=2, causal=True))


def test_cross_attention_context_gradient_and_self_attention_form():
    # with context = x, cross-attention's dx + dcontext is self-attention's dx
    rng = np.random.default_rng(3)
    params = {n: jnp.asarray(rng.standard_normal((8, 8))) for n in attention.PARAM_NAMES}
    x, dy = jnp.asarray(rng.standard_normal((2, 3, 8))), jnp.asarray(rng.standard_normal((2, 3, 8)))
    (dparams, dx), (cparams, cdx, dcontext), y_cross, y_self = _self_and_cross(params, x, dy)
    np.testing.assert_allclose(cdx + dcontext, dx, rtol=1e-12, atol=1e-13)
    for n in params:
        np.testing.assert_allclose(cparams[n], dparams[n], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(y_cross, y_self, rtol=1e-13, atol=1e-14)
