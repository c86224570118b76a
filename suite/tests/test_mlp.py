"""manual.mlp.grad beyond the registry: planted derivation bugs, the kink convention in a
network, a closed form, the input costate, dtypes, jit, and bad input.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import activations, losses, mlp
from suite import run
from suite.cases.mlp import net_case

# --- planted bugs in the costate recursion -------------------------------------------------
#
# A copy of the recursion with one plausible slip switched on; the registry's comparison
# (suite.run.run_case, the same path as every row) must turn each into a FAIL. Square
# hidden widths let a transposed W slip through without a shape error.

BUGS = ("missing_fprime", "transposed_w", "bias_without_batch_sum", "l2_on_bias",
        "l2_twice", "delta_L_not_divided_by_N", "fprime_of_a_not_z", "costate_skips_a_layer")


def _buggy_grad(params, x, y, *, activation, loss, l2, bug):
    f = activations.get(activation)
    a, z = mlp.stages(params, x, activation=activation)
    delta = losses.get(loss).grad(z[-1], y)
    if bug == "delta_L_not_divided_by_N":
        delta = delta * x.shape[0]
    grads = []
    for l in range(len(params) - 1, -1, -1):
        w, b = params[l]
        dw = a[l].T @ delta + (2 if bug == "l2_twice" else 1) * l2 * w
        db = delta[0] if bug == "bias_without_batch_sum" else delta.sum(axis=0)
        if bug == "l2_on_bias":
            db = db + l2 * b
        grads.append((dw, db))
        if l > 0:
            back = delta @ (w if bug == "transposed_w" else w.T)
            if bug == "missing_fprime":
                fprime = jnp.ones_like(back)
            elif bug == "fprime_of_a_not_z":
                fprime = f.df(a[l])
            else:
                fprime = f.df(z[l - 1])
            if not (bug == "costate_skips_a_layer" and l == 1):
                delta = fprime * back
    return tuple(reversed(grads))


PLANT_CONFIG = dict(activation="tanh", loss="softmax_cross_entropy", l2=0.1)


@pytest.mark.parametrize("bug", BUGS)
def test_planted_derivation_bug_fails(bug):
    case = net_case("mlp/net/planted", [4, 4, 4, 4], 5, **PLANT_CONFIG)

    def manual(inputs):
        return _buggy_grad(inputs["params"], inputs["x"], inputs["y"], bug=bug, **PLANT_CONFIG)

    planted = dataclasses.replace(case, manual=manual)
    row = run.run_case(planted, "float64", timing=False, fd=False)
    assert row.status == "FAIL", row


def test_planted_bug_shared_with_the_oracle_is_caught_by_finite_differences():
    # jax.grad cannot make the slip itself, so plant it on both sides: manual and oracle
    # then agree, and only the finite-difference witness of the loss can object.
    case = net_case("mlp/net/planted", [4, 4, 4, 4], 5, **PLANT_CONFIG)

    def buggy(inputs):
        return _buggy_grad(inputs["params"], inputs["x"], inputs["y"], bug="missing_fprime",
                           **PLANT_CONFIG)

    row = run.run_case(dataclasses.replace(case, manual=buggy, reference=buggy), "float64",
                       timing=False)
    assert row.status == "FAIL" and "finite-difference" in row.message, row


def test_buggy_copy_without_a_bug_passes():
    # the planted-bug copy is faithful apart from its switch: the FAILs above are the bugs
    case = net_case("mlp/net/planted", [4, 4, 4, 4], 5, **PLANT_CONFIG)

    def manual(inputs):
        return _buggy_grad(inputs["params"], inputs["x"], inputs["y"], bug=None, **PLANT_CONFIG)

    row = run.run_case(dataclasses.replace(case, manual=manual), "float64", timing=False)
    assert row.status == "PASS", row


# --- conventions and closed forms ------------------------------------------------------------

def test_relu_kink_in_a_network_follows_jax():
    # z_1 = x W_1 + b_1 is exactly 0 for the first unit: ReLU'(0) = 0 sends it no costate,
    # as jax.grad does; the second unit is active.
    x = jnp.asarray([[1.0, -1.0], [2.0, 0.5]])
    w1 = jnp.asarray([[1.0, 1.0], [1.0, 2.0]])
    b1 = jnp.asarray([0.0, 0.5])
    w2, b2 = jnp.asarray([[1.5], [-0.5]]), jnp.asarray([0.25])
    params, y = ((w1, b1), (w2, b2)), jnp.asarray([[1.0], [-1.0]])
    a, z = mlp.stages(params, x, activation="relu")
    assert float(z[0][0, 0]) == 0.0
    config = dict(activation="relu", loss="mse")
    manual, auto = jax.jit(lambda p: (mlp.grad(p, x, y, **config),
                                      jax.grad(lambda q: mlp.loss(q, x, y, **config))(p)))(params)
    for m, r in zip(jax.tree_util.tree_leaves(manual), jax.tree_util.tree_leaves(auto),
                    strict=True):
        np.testing.assert_allclose(m, r, rtol=1e-15, atol=1e-15)


def test_one_layer_mse_is_least_squares():
    # L = 1: E = ½ mean ||xW + b - y||² + ½λ||W||², so dW = xᵀ(xW + b - y)/N + λW
    rng = np.random.default_rng(4)
    x, w, b, y = (rng.normal(size=s) for s in ((7, 3), (3, 2), (2,), (7, 2)))
    r = (x @ w + b - y) / 7
    (dw, db), = mlp.grad(((jnp.asarray(w), jnp.asarray(b)),), jnp.asarray(x), jnp.asarray(y),
                         activation="tanh", loss="mse", l2=0.3)
    np.testing.assert_allclose(dw, x.T @ r + 0.3 * w, rtol=1e-13)
    np.testing.assert_allclose(db, r.sum(axis=0), rtol=1e-13)


def _net(dtype=jnp.float64, widths=(3, 5, 4, 2), n=6, loss="softmax_cross_entropy"):
    rng = np.random.default_rng(9)
    params = tuple((jnp.asarray(rng.normal(size=(widths[l], widths[l + 1]))
                                / np.sqrt(widths[l]), dtype),
                    jnp.asarray(rng.normal(size=widths[l + 1]) * 0.1, dtype))
                   for l in range(len(widths) - 1))
    x = jnp.asarray(rng.normal(size=(n, widths[0])), dtype)
    y = (jnp.asarray(rng.integers(0, widths[-1], n), jnp.int32) if loss != "mse"
         else jnp.asarray(rng.normal(size=(n, widths[-1])), dtype))
    return params, x, y


def test_input_costate_is_the_gradient_in_x():
    params, x, y = _net()
    config = dict(activation="gelu", loss="softmax_cross_entropy", l2=0.1)

    @jax.jit
    def run(params, x):
        a, z = mlp.stages(params, x, activation="gelu")
        return (mlp.backprop(params, a, z, y, input_costate=True, **config),
                jax.grad(lambda u: mlp.loss(params, u, y, **config))(x),
                mlp.grad(params, x, y, **config))

    (grads, dx), dx_auto, grads_plain = run(params, x)
    np.testing.assert_allclose(dx, dx_auto, rtol=1e-12, atol=1e-15)
    for g, h in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_plain),
                    strict=True):
        np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved_and_jit_compatible(dtype):
    params, x, y = _net(dtype)
    grad = jax.jit(mlp.grad, static_argnames=("activation", "loss", "l2"))
    out = grad(params, x, y, activation="sigmoid", loss="softmax_cross_entropy", l2=0.1)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(params)
    assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(out))


# --- bad input ------------------------------------------------------------------------------

def _call(params=None, x=None, y=None, activation="tanh", loss="softmax_cross_entropy"):
    p0, x0, y0 = _net()
    return mlp.grad(p0 if params is None else params, x0 if x is None else x,
                    y0 if y is None else y, activation=activation, loss=loss)


def test_widths_that_do_not_chain_are_a_value_error():
    (w1, b1), (w2, b2), last = _net()[0]
    with pytest.raises(ValueError, match=r"params\[1\] w must have 5 rows .* got \(4, 4\)"):
        _call(params=((w1, b1), (w2[:4, :], b2), last))
    with pytest.raises(ValueError, match=r"params\[0\] b must have shape \(5,\) .* got \(4,\)"):
        _call(params=((w1, b1[:4]), (w2, b2), last))
    with pytest.raises(ValueError,
                       match=r"params\[0\] w must have 2 rows .* \(x \(6, 2\), .* got \(3, 5\)"):
        _call(x=jnp.ones((6, 2)))
    with pytest.raises(ValueError, match=r"params must be a non-empty tuple"):
        _call(params=())


@pytest.mark.parametrize("y, pattern", [
    (jnp.zeros(6, jnp.float64), r"y must be integer class labels .* dtype float64"),
    (jnp.asarray([0, 1, 2, 1, 0, 1]),
     r"y must hold labels in \[0, 2\) for logits \(6, 2\), got values in \[0, 2\]"),
    (jnp.asarray([0, 1, -1, 1, 0, 1]), r"y must hold labels in \[0, 2\) .* \[-1, 1\]"),
    (jnp.zeros(5, jnp.int32), r"y must have shape \(N,\) = \(6,\)"),
])
def test_bad_labels_are_value_errors(y, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(y=y)


def test_out_of_range_labels_under_jit_give_nan_gradients():
    params, x, _ = _net()
    out = jax.jit(lambda p, x, y: mlp.grad(p, x, y, activation="tanh",
                                           loss="softmax_cross_entropy", l2=0.1))(
        params, x, jnp.asarray([0, 1, 2, 1, 0, 1]))
    assert all(np.isnan(leaf).all() for leaf in jax.tree_util.tree_leaves(out))


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'swish'"):
        _call(activation="swish")
    with pytest.raises(ValueError, match=r"loss must be one of .* got 'hinge'"):
        _call(loss="hinge")


def test_mse_targets_of_the_wrong_shape_are_a_value_error():
    params, x, _ = _net()
    with pytest.raises(ValueError, match=r"y must have the shape of logits \(6, 2\) for mse"):
        mlp.grad(params, x, jnp.zeros((6, 3)), activation="tanh", loss="mse")


def test_bad_input_is_caught_at_trace_time_under_jit():
    params, x, y = _net()
    (w1, b1), rest = params[0], params[1:]
    bad = ((w1, b1[:2]),) + rest
    with pytest.raises(ValueError, match=r"params\[0\] b must have shape"):
        jax.jit(lambda p: mlp.grad(p, x, y, activation="tanh", loss="softmax_cross_entropy"))(bad)


def test_backprop_needs_one_stage_per_layer():
    params, x, y = _net()
    a, z = mlp.stages(params, x, activation="tanh")
    with pytest.raises(ValueError,
                       match=r"a and z must hold one entry per layer \(3\), .* got 2 and 3"):
        mlp.backprop(params, a[:2], z, y, activation="tanh", loss="softmax_cross_entropy")


# --- per-layer activations and the extension points -------------------------------------

def test_one_activation_per_layer():
    # the same name for every layer is the single name; a mixed list runs layer by layer
    params, x, y = _net(widths=(3, 5, 4, 4, 2))
    cfg = dict(loss="softmax_cross_entropy", l2=0.1)
    same = mlp.grad(params, x, y, activation=["tanh"] * 3, **cfg)
    for a, b in zip(jax.tree_util.tree_leaves(same),
                    jax.tree_util.tree_leaves(mlp.grad(params, x, y, activation="tanh", **cfg)),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    mixed = ("tanh", activations.softplus, "gelu")
    a, _ = mlp.stages(params, x, activation=mixed)
    z1 = x @ params[0][0] + params[0][1][None, :]
    z2 = jnp.tanh(z1) @ params[1][0] + params[1][1][None, :]
    np.testing.assert_allclose(a[2], activations.softplus.f(z2), rtol=1e-15)
    with pytest.raises(ValueError, match=r"one entry per hidden layer \(3\), got 2"):
        mlp.grad(params, x, y, activation=("tanh", "relu"), **cfg)


def test_custom_vjp_wrapper_takes_per_layer_activations_and_a_user_loss():
    from suite.cases.mlp import HUBER, SILU
    from suite.custom_grad import mlp_loss
    params, x, _ = _net(widths=(3, 5, 4, 2))
    y = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)))
    config = dict(activation=[SILU, "tanh"], loss=HUBER, l2=0.1)
    hand = jax.jit(lambda p: jax.grad(mlp_loss(**config))(p, x, y))(params)
    for a, b in zip(jax.tree_util.tree_leaves(hand),
                    jax.tree_util.tree_leaves(mlp.grad(params, x, y, **config)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-16)
    assert mlp_loss(**config) is mlp_loss(**dict(config, activation=(SILU, "tanh")))


@pytest.mark.parametrize("l2, pattern", [
    (-0.5, r"l2 must be >= 0 \(a weight-decay coefficient\), got -0.5"),
    (True, r"l2 must be a number >= 0, got True"),
    ("0.1", r"l2 must be a number >= 0, got '0.1'"),
])
def test_bad_l2_is_a_value_error(l2, pattern):
    p0, x0, y0 = _net()
    with pytest.raises(ValueError, match=pattern):
        mlp.grad(p0, x0, y0, activation="tanh", loss="softmax_cross_entropy", l2=l2)
    with pytest.raises(ValueError, match=pattern):
        mlp.loss(p0, x0, y0, activation="tanh", loss="softmax_cross_entropy", l2=l2)


def test_a_single_pair_or_dicts_as_params_are_value_errors():
    (w1, b1), *_ = _net()[0]
    with pytest.raises(ValueError, match=r"a single pair of arrays .* one layer is \(\(w, b\),\)"):
        _call(params=(w1, b1))
    with pytest.raises(ValueError, match=r"params\[0\] must be a \(w, b\) pair, got a dict"):
        _call(params=[{"w": w1, "b": b1}])
