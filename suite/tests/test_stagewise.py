"""manual.stagewise beyond the registry: symmetry, chunking, planted derivation bugs,
dtypes and bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import mlp, stagewise
from reference import autodiff
from suite import compare as cmp
from suite import run
from suite.cases import get as get_case
from suite.cases.common import mlp_inputs
from suite.cases.stagewise import gauss_newton_reference, widths_for

KW = dict(activation="tanh", loss="softmax_cross_entropy", l2=0.1)


def _inputs(dtype="float64", depth=3, n=7, activation="tanh", loss="softmax_cross_entropy"):
    return mlp_inputs(jax.random.PRNGKey(3), widths_for(depth), n, dtype, loss=loss,
                      activation=activation)


def _layout(params):
    widths = [params[0][0].shape[0]] + [w.shape[1] for w, _ in params]
    sizes = [(a + 1) * b for a, b in zip(widths, widths[1:])]
    return np.cumsum([0] + sizes[:-1]), sizes


def test_hessian_is_symmetric():
    i = _inputs(depth=4)
    h = np.asarray(jax.jit(lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **KW))(i))
    offsets, sizes = _layout(i["params"])
    for l in range(len(sizes)):  # off-diagonal blocks are mirrored: exactly transposed
        for m in range(l + 1, len(sizes)):
            rows, cols = slice(offsets[l], offsets[l] + sizes[l]), slice(offsets[m], offsets[m] + sizes[m])
            np.testing.assert_array_equal(h[cols, rows], h[rows, cols].T)
    # diagonal blocks are symmetric to rounding (a few ulps of the matrix's scale)
    assert np.linalg.norm(h - h.T) <= 1e-15 * np.linalg.norm(h)


@pytest.mark.parametrize("dtype,chunk_bytes", [("float64", 1), ("float32", 3000)])  # one sample per chunk; 3 per chunk, padded
def test_sample_chunking_matches_jax_hessian(dtype, chunk_bytes):
    i = _inputs(dtype, depth=3, n=7)
    chunked = lambda i: stagewise.curvature(i["params"], i["x"], i["y"], **KW,  # noqa: E731
                                            chunk_bytes=chunk_bytes)
    h = jax.jit(chunked)(i)
    ref = jax.jit(lambda i: autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"], **KW))(i)
    assert "scan" in str(jax.make_jaxpr(chunked)(i))  # the chunked path really runs
    result = cmp.compare(h, ref, dtype)
    assert result.passed, result.message
    assert h.dtype == jnp.dtype(dtype)


def test_dtype_is_preserved():
    i = _inputs("float32")
    v = jax.tree_util.tree_map(jnp.ones_like, i["params"])
    for fn in (stagewise.hessian, stagewise.gauss_newton):
        assert jax.jit(lambda i: fn(i["params"], i["x"], i["y"], **KW))(i).dtype == jnp.float32
    hv = jax.jit(lambda i, v: stagewise.hvp(i["params"], i["x"], i["y"], v, **KW))(i, v)
    assert all(t.dtype == jnp.float32 for t in jax.tree_util.tree_leaves(hv))


def test_gauss_newton_is_hessian_without_residual_terms_for_linear_net():
    # depth 1: no hidden layer, so no f'' and no cross terms: G = H exactly in math.
    i = _inputs(depth=1)
    g = stagewise.gauss_newton(i["params"], i["x"], i["y"], **KW)
    h = stagewise.hessian(i["params"], i["x"], i["y"], **KW)
    np.testing.assert_allclose(g, h, rtol=0, atol=1e-15)


def test_l2_touches_only_weight_coordinates():
    i = _inputs()
    h = lambda l2: jax.jit(lambda i: stagewise.hessian(i["params"], i["x"], i["y"],
                                                      **dict(KW, l2=l2)))(i)
    diff = np.asarray(h(0.5) - h(0.0))
    offsets, sizes = _layout(i["params"])
    expected = np.zeros(diff.shape[0])
    for (w, _), off in zip(i["params"], offsets):
        expected[off:off + w.size] = 0.5
    np.testing.assert_allclose(diff, np.diag(expected), rtol=0, atol=1e-14)


def test_relu_kink_convention_follows_jax():
    # A pre-activation exactly at 0: ReLU'(0) = 0 and f'' = 0, as jax.nn.relu differentiates.
    params = ((jnp.array([[1.0, -1.0]]), jnp.array([0.0, 0.5])),
              (jnp.array([[2.0], [3.0]]), jnp.array([0.1])))
    x, y = jnp.array([[0.0], [1.0]]), jnp.array([[0.3], [-0.2]])
    kw = dict(activation="relu", loss="mse")
    h = jax.jit(lambda p: stagewise.hessian(p, x, y, **kw))(params)
    ref = jax.jit(jax.hessian(lambda f: _relu_loss(f, x, y)))(
        jax.flatten_util.ravel_pytree(params)[0])
    np.testing.assert_allclose(h, ref, rtol=0, atol=1e-15)


def _relu_loss(flat, x, y):
    (w1, b1), (w2, b2) = jax.flatten_util.ravel_pytree(
        ((jnp.zeros((1, 2)), jnp.zeros(2)), (jnp.zeros((2, 1)), jnp.zeros(1))))[1](flat)
    out = jax.nn.relu(x @ w1 + b1[None, :]) @ w2 + b2[None, :]
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))


# --- planted bugs: each plausible slip in the derivation must turn a PASS into a FAIL ---

def _planted(case, manual):
    return dataclasses.replace(case, name=case.name + "+planted", manual=manual)


def _first(kind):
    from suite.cases import cases
    return next(c for c in cases(family="stagewise", tiers=("test",))
                if c.name.startswith(f"stagewise/{kind}/") and "d1-" not in c.name)


def _args(case):
    activation, loss, l2 = _spec_of(case)
    return dict(activation=activation, loss=loss, l2=l2)


def _spec_of(case):
    # the name is stagewise/<kind>/<activation>-<loss>-d<depth>-N<n>-l2<l2>
    act, loss, _, _, l2 = case.name.split("/")[2].split("-")[:5]
    return act, {"mse": "mse", "ce": "softmax_cross_entropy"}[loss], float(l2[2:])


PLANTED_HESSIANS = {
    "no f'' term in Ω": dict(f2_term=False, cross_term=True),
    "no first-order cross term": dict(f2_term=True, cross_term=False),
}


@pytest.mark.parametrize("what", sorted(PLANTED_HESSIANS))
def test_planted_missing_term_fails(what):
    case = get_case("stagewise/hessian/tanh-ce-d3-N7-l20.1")
    kw = _args(case)
    bad = _planted(case, lambda i: stagewise.curvature(i["params"], i["x"], i["y"], **kw,
                                                       **PLANTED_HESSIANS[what]))
    row = run.run_case(bad, "float64", timing=False, fd=False)
    assert row.status == "FAIL", row


def _mutate_blocks(fn):
    def manual(case):
        kw = _args(case)
        return lambda i: fn(stagewise.hessian(i["params"], i["x"], i["y"], **kw), i["params"])
    return manual


def _untransposed_mirror(h, params):
    # write the lower block (2, 1) as the upper one reshaped, not transposed
    offsets, sizes = _layout(params)
    up = h[offsets[0]:offsets[0] + sizes[0], offsets[1]:offsets[1] + sizes[1]]
    return h.at[offsets[1]:offsets[1] + sizes[1], offsets[0]:offsets[0] + sizes[0]].set(
        up.reshape(sizes[1], sizes[0]))


def _l2_on_biases(h, params):
    offsets, _ = _layout(params)
    idx = np.concatenate([off + w.size + np.arange(b.size) for (w, b), off in zip(params, offsets)])
    return h.at[idx, idx].add(0.1)


def _loss_hessian_not_averaged(h, params):
    return h * 7  # Ω_L = ℓ'' instead of ℓ''/N (N = 7)


@pytest.mark.parametrize("mutate", [_untransposed_mirror, _l2_on_biases, _loss_hessian_not_averaged])
def test_planted_assembly_slip_fails(mutate):
    case = get_case("stagewise/hessian/tanh-ce-d3-N7-l20.1")
    row = run.run_case(_planted(case, _mutate_blocks(mutate)(case)), "float64", timing=False,
                       fd=False)
    assert row.status == "FAIL", row


def test_planted_hvp_without_curvature_terms_fails():
    # G v instead of H v: the R-pass that forgets f'' and the δ V terms
    case = get_case("stagewise/hvp/tanh-mse-d3-N7-l20.1")
    kw = _args(case)

    def gv(i):
        flat, unravel = jax.flatten_util.ravel_pytree(i["v"])
        return unravel(stagewise.gauss_newton(i["params"], i["x"], i["y"], **kw) @ flat)

    row = run.run_case(_planted(case, gv), "float64", timing=False)
    assert row.status == "FAIL", row


def test_planted_gauss_newton_with_residual_terms_fails():
    case = get_case("stagewise/gauss_newton/tanh-ce-d2-N7-l20.1")
    kw = _args(case)
    bad = _planted(case, lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **kw))
    row = run.run_case(bad, "float64", timing=False)
    assert row.status == "FAIL", row


def test_gauss_newton_reference_is_independent_of_manual_losses():
    # the oracle's Λ comes from jax.hessian of a loss written in the case module
    i = _inputs(depth=2, loss="mse")
    g = gauss_newton_reference(i["params"], i["x"], i["y"], activation="tanh", loss="mse", l2=0.0)
    jac = autodiff.jacobian(mlp.forward, i["params"], i["x"], activation="tanh")
    np.testing.assert_allclose(g, np.einsum("nap,naq->pq", jac, jac) / 7, rtol=1e-13, atol=1e-15)


# --- bad input: ValueError naming the argument, at trace time ---

def test_bad_v_is_a_value_error():
    i = _inputs()
    v = list(jax.tree_util.tree_map(jnp.ones_like, i["params"]))
    v[1] = (jnp.ones((2, 2)), v[1][1])
    with pytest.raises(ValueError, match=r"v\[1\] w must have the shape and dtype of params\[1\] w"):
        stagewise.hvp(i["params"], i["x"], i["y"], tuple(v), **KW)
    with pytest.raises(ValueError, match="v must be params-shaped"):
        stagewise.hvp(i["params"], i["x"], i["y"], v[:1], **KW)


@pytest.mark.parametrize("fn", [stagewise.hessian, stagewise.gauss_newton])
def test_bad_input_is_a_value_error_under_jit(fn):
    i = _inputs()
    params = list(i["params"])
    params[1] = (params[1][0][:2], params[1][1])
    with pytest.raises(ValueError, match=r"params\[1\] w must have 5 rows"):
        jax.jit(lambda p: fn(p, i["x"], i["y"], **KW))(tuple(params))
    with pytest.raises(ValueError, match=r"y must have shape \(N,\) = \(7,\)"):
        jax.jit(lambda y: fn(i["params"], i["x"], y, **KW))(i["y"][:3])
    with pytest.raises(ValueError, match="l2 must be a scalar"):
        fn(i["params"], i["x"], i["y"], **dict(KW, l2=jnp.ones(2)))
    with pytest.raises(ValueError, match="activation must be one of"):
        fn(i["params"], i["x"], i["y"], **dict(KW, activation="swish"))
