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
    (((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 3, 4)),
     r"k must have the shape of q, \(B, heads, T, d\) = \(1, 2, 3, 4\), got \(1, 2, 5, 4\)"),
    (((1, 2, 3, 4), (1, 2, 3, 4), (2, 3, 4)), r"v must have rank 4"),
    (((1, 2, 0, 4), (1, 2, 0, 4), (1, 2, 0, 4)), r"q must have T >= 1 and d >= 1"),
])
def test_bad_attention_input_is_a_value_error(shapes, pattern):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=pattern):
        attention.forward(q, k, v)
    with pytest.raises(ValueError, match="causal must be a bool"):
        attention.forward(*(jnp.ones((1, 1, 2, 2)),) * 3, causal="yes")
