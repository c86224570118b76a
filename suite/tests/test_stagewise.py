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
    sizes = [(a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return np.cumsum([0] + sizes[:-1]), sizes


def test_hessian_is_symmetric():
    i = _inputs(depth=4)
    h = np.asarray(jax.jit(lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **KW))(i))
    offsets, sizes = _layout(i["params"])
    for l in range(len(sizes)):  # off-diagonal blocks are mirrored: exactly transposed
        for m in range(l + 1, len(sizes)):
            rows = slice(offsets[l], offsets[l] + sizes[l])
            cols = slice(offsets[m], offsets[m] + sizes[m])
            np.testing.assert_array_equal(h[cols, rows], h[rows, cols].T)
    # diagonal blocks are symmetric to rounding (a few ulps of the matrix's scale)
    assert np.linalg.norm(h - h.T) <= 1e-15 * np.linalg.norm(h)


# one sample per chunk; 3 per chunk, padded
@pytest.mark.parametrize("dtype,chunk_bytes", [("float64", 1), ("float32", 3000)])
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
        out = jax.jit(lambda i, fn=fn: fn(i["params"], i["x"], i["y"], **KW))(i)
        assert out.dtype == jnp.float32
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

    def h(l2):
        return jax.jit(lambda i: stagewise.hessian(i["params"], i["x"], i["y"],
                                                   **dict(KW, l2=l2)))(i)

    diff = np.asarray(h(0.5) - h(0.0))
    offsets, sizes = _layout(i["params"])
    expected = np.zeros(diff.shape[0])
    for (w, _), off in zip(i["params"], offsets, strict=True):
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
    idx = np.concatenate([off + w.size + np.arange(b.size)
                          for (w, b), off in zip(params, offsets, strict=True)])
    return h.at[idx, idx].add(0.1)


def _loss_hessian_not_averaged(h, params):
    return h * 7  # Ω_L = ℓ'' instead of ℓ''/N (N = 7)


@pytest.mark.parametrize("mutate", [_untransposed_mirror, _l2_on_biases,
                                    _loss_hessian_not_averaged])
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
    with pytest.raises(ValueError,
                       match=r"v\[1\] w must have the shape and dtype of params\[1\] w"):
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


# --- the curvature toolkit: diagonal, blocks, rows, tiles --------------------------------

def _toolkit_inputs(widths=(5, 7, 6, 3), n=9, loss="softmax_cross_entropy"):
    return mlp_inputs(jax.random.PRNGKey(5), list(widths), n, "float64", loss=loss,
                      activation="tanh")


def test_tiles_bands_remainders_and_chunks_match_jax_hessian(monkeypatch):
    # Three input rows per loop step for the scaled tiles (stacked into one product), one
    # per Γ tile, three bands per diagonal block, on a small net: every fori_loop,
    # remainder step, band and mirrored band edge of the assembly runs, for the whole
    # matrix and for row slabs (sample-chunked too; the whole matrix chunked:
    # test_sample_chunking_matches_jax_hessian). hessian_blocks runs the same band jobs;
    # the defaults (one row per step, wider Γ chunks for narrow layers) run in the registry.
    # small=0: no strip is one step, loops everywhere; unroll=2: two tiles per iteration
    # (and a loop whose trip count it does not divide)
    monkeypatch.setattr(stagewise, "TILING", stagewise.TILING.replace(
        tile_columns=4, stack=3, bands=3, small=0, unroll=2))
    i = _toolkit_inputs()
    p, x, y = i["params"], i["x"], i["y"]
    v = jax.tree_util.tree_map(lambda t: jnp.cos(jnp.arange(t.size, dtype=t.dtype)
                                                 ).reshape(t.shape), p)
    flat_v = jax.flatten_util.ravel_pytree(v)[0]

    def everything(p):
        return dict(
            matvec=stagewise.hessian_matvec(p, x, y, **KW)(flat_v),
            hvp=jax.flatten_util.ravel_pytree(stagewise.hvp(p, x, y, v, **KW))[0],
            full=stagewise.hessian(p, x, y, **KW),
            rows=stagewise.hessian_rows(p, x, y, 17, 101, **KW),  # ends inside row groups
            rows_chunked=stagewise.hessian_rows(p, x, y, 0, 48, **KW, chunk_bytes=1),
            ref=autodiff.hessian(mlp.loss, p, x, y, **KW))

    out = jax.jit(everything)(p)
    ref = out["ref"]
    expected = dict(full=ref, rows=ref[17:101], rows_chunked=ref[:48],
                    matvec=out["hvp"])  # the flat form of hvp (hvp itself: a registry case)
    for name, want in expected.items():
        result = cmp.compare(out[name], want, "float64")
        assert result.passed, (name, result.message)


def _toolkit_case(make, **spec):
    return make(spec, "test")


def _planted_row(case, manual=None, reference=None, fd=False):
    bad = dataclasses.replace(case, name=case.name + "+planted",
                              manual=manual or case.manual, reference=reference or case.reference)
    return run.run_case(bad, "float64", timing=False, fd=fd)


def test_diagonal_planted_bugs_fail():
    from suite.cases.stagewise import diagonal_case
    case = _toolkit_case(diagonal_case, activation="tanh", loss="softmax_cross_entropy",
                         depth=2, n=5, l2=0.1)
    kw = _args(case)
    # the Gauss-Newton diagonal (Ω without its f'' term) passed off as the Hessian's
    gn = _planted_row(case, lambda i: stagewise.gauss_newton_diagonal(i["params"], i["x"],
                                                                      i["y"], **kw))
    assert gn.status == "FAIL", gn
    # a slip shared with the oracle: only the witness e_iᵀ H e_i can object
    double = lambda out: jax.tree_util.tree_map(lambda t: 2 * t, out)  # noqa: E731
    shared = _planted_row(case, lambda i: double(case.manual(i)),
                          lambda i: double(case.reference(i)), fd=True)
    assert shared.status == "FAIL" and "finite-difference" in shared.message, shared


def test_blocks_in_the_other_kronecker_order_fail():
    # Ω ⊗ â âᵀ instead of â âᵀ ⊗ Ω: the same numbers, in the wrong ravel order
    from suite.cases.stagewise import blocks_case
    case = _toolkit_case(blocks_case, activation="tanh", loss="mse", depth=2, n=5, l2=0.0)

    def swapped(i):
        out = []
        for (w, _), block in zip(i["params"], case.manual(i), strict=True):
            a, k = w.shape[0] + 1, w.shape[1]
            out.append(block.reshape(a, k, a, k).transpose(1, 0, 3, 2).reshape(a * k, a * k))
        return tuple(out)

    assert _planted_row(case, swapped).status == "FAIL"


def test_rows_one_off_fail():
    from suite.cases.stagewise import rows_case
    case = _toolkit_case(rows_case, activation="tanh", loss="mse", depth=2, n=5, l2=0.1,
                         rows=(0.2, 0.7))
    start, stop = (int(t) for t in case.name.split("-r")[-1].split(":"))
    kw = _args(case)
    shifted = _planted_row(case, lambda i: stagewise.hessian_rows(
        i["params"], i["x"], i["y"], start + 1, stop + 1, **kw))
    assert shifted.status == "FAIL", shifted


@pytest.mark.slow
def test_gauss_newton_diagonal_with_residual_terms_fails():
    from suite.cases.stagewise import gn_diagonal_case
    case = _toolkit_case(gn_diagonal_case, activation="tanh", loss="softmax_cross_entropy",
                         depth=2, n=5, l2=0.1)
    kw = _args(case)
    bad = _planted_row(case, lambda i: stagewise.hessian_diagonal(i["params"], i["x"], i["y"],
                                                                  **kw))
    assert bad.status == "FAIL", bad


def test_hessian_matvec_checks_its_vector():
    i = _toolkit_inputs()
    with pytest.raises(ValueError, match=r"v must be a flat vector of shape \(111,\)"):
        jax.jit(lambda i: stagewise.hessian_matvec(i["params"], i["x"], i["y"], **KW)(
            jnp.ones(110)))(i)


@pytest.mark.parametrize("start, stop, pattern", [
    (5, 5, r"0 <= start < stop <= P = 111, got start 5, stop 5"),
    (0, 112, r"got start 0, stop 112"),
    (-1, 3, r"got start -1"),
    (0.0, 3, r"start must be a Python int"),
])
def test_bad_rows_are_value_errors(start, stop, pattern):
    i = _toolkit_inputs()
    with pytest.raises(ValueError, match=pattern):
        stagewise.hessian_rows(i["params"], i["x"], i["y"], start, stop, **KW)


@pytest.mark.parametrize("fn", [stagewise.hessian_diagonal, stagewise.gauss_newton_diagonal,
                                stagewise.hessian_blocks])
def test_toolkit_bad_input_is_a_value_error(fn):
    i = _toolkit_inputs()
    with pytest.raises(ValueError, match=r"activation must hold one entry per hidden layer "
                                         r"\(2\), got 3"):
        fn(i["params"], i["x"], i["y"], **dict(KW, activation=("tanh", "relu", "gelu")))
    with pytest.raises(ValueError, match="l2 must be a scalar"):
        fn(i["params"], i["x"], i["y"], **dict(KW, l2=jnp.ones(2)))
    with pytest.raises(ValueError, match=r"loss must be one of .* got 'hinge'"):
        fn(i["params"], i["x"], i["y"], **dict(KW, loss="hinge"))


def _bad_params_forms(params):
    (w0, b0) = params[0]
    return [
        ([{"w": w, "b": b} for w, b in params], r"params\[0\] must be a \(w, b\) pair, got a dict "
                                                r"with keys \['b', 'w'\]"),
        ((w0, b0), r"params must be a tuple of \(w, b\) pairs, got a single pair of arrays of "
                   r"shapes \(\d+, \d+\) and \(\d+,\); one layer is \(\(w, b\),\)"),
        ({"w": w0, "b": b0}, r"params must be a non-empty tuple of \(w, b\) pairs, got dict"),
    ]


@pytest.mark.parametrize("form", range(3))
@pytest.mark.parametrize("fn", ["hessian", "gauss_newton", "hessian_blocks", "hessian_diagonal",
                                "hessian_matvec", "layout"])
def test_params_are_validated_before_their_layout_is_read(fn, form):
    # a list of {'w', 'b'} dicts gave KeyError: 0, a single (w, b) pair "too many values"
    i = _toolkit_inputs()
    bad, pattern = _bad_params_forms(i["params"])[form]
    with pytest.raises(ValueError, match=pattern):
        if fn == "layout":
            stagewise.layout(bad)
        else:
            getattr(stagewise, fn)(bad, i["x"], i["y"], **KW)


def test_hessian_matvec_refuses_a_params_shaped_vector():
    i = _toolkit_inputs()
    matvec = stagewise.hessian_matvec(i["params"], i["x"], i["y"], **KW)
    with pytest.raises(ValueError, match=r"v must be a flat vector of shape \(111,\) in "
                                         r"ravel_pytree\(params\) order, got a tuple of 3 "
                                         r"entries \(for a params-shaped v use stagewise.hvp\)"):
        matvec(i["params"])


@pytest.mark.parametrize("l2", [-0.1, -1, np.float64(-1e-3)])
@pytest.mark.parametrize("fn", ["hessian", "hessian_diagonal", "hvp", "hessian_rows"])
def test_negative_l2_is_a_value_error(fn, l2):
    i = _toolkit_inputs()
    args = {"hvp": (i["params"],), "hessian_rows": (0, 3)}.get(fn, ())
    with pytest.raises(ValueError, match=r"l2 must be >= 0 \(a weight-decay coefficient\), got "):
        getattr(stagewise, fn)(i["params"], i["x"], i["y"], *args, **dict(KW, l2=l2))
