"""manual.losses beyond the registry: values against plain numpy, stability at logits
of ±1e4 in float32, the per-sample Hessian against finite differences, bad labels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import losses
from reference import finite_diff


def _logits(n=6, m=4, dtype=jnp.float64, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, m)), dtype)


def test_values_match_numpy():
    z = np.random.default_rng(1).normal(size=(5, 3))
    y_float = np.random.default_rng(2).normal(size=(5, 3))
    labels = np.array([0, 2, 1, 1, 0])
    mse = 0.5 * np.mean(np.sum((z - y_float) ** 2, axis=1))
    lse = np.log(np.sum(np.exp(z), axis=1))
    ce = np.mean(lse - z[np.arange(5), labels])
    np.testing.assert_allclose(losses.mse.value(jnp.asarray(z), jnp.asarray(y_float)), mse,
                               rtol=1e-14)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy.value(jnp.asarray(z), jnp.asarray(labels)), ce, rtol=1e-14)


def test_cross_entropy_is_finite_and_exact_at_logits_of_1e4_in_float32():
    # sample 0: lse = 1e4, loss 1e4 - (-1e4) = 2e4; sample 1: its label holds the max, loss 0.
    z = jnp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], jnp.float32)
    y = jnp.asarray([1, 2], jnp.int32)
    ce = losses.softmax_cross_entropy
    def all_three(z, y):
        return ce.value(z, y), ce.grad(z, y), ce.hessian(z, y)

    for fn in (lambda: all_three(z, y), lambda: jax.jit(all_three)(z, y)):
        value, grad, hess = fn()
        assert value.dtype == grad.dtype == hess.dtype == jnp.float32
        assert float(value) == 1e4
        np.testing.assert_array_equal(grad, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]])
        np.testing.assert_array_equal(hess, np.zeros((2, 3, 3)))  # p one-hot: diag(p) - ppᵀ = 0


def test_cross_entropy_ties_at_1e4_split_the_probability():
    z = jnp.asarray([[1e4, 1e4, -1e4, 1e4 - 1.0]], jnp.float32)
    grad = losses.softmax_cross_entropy.grad(z, jnp.asarray([2]))
    p_top = 1.0 / (2.0 + np.exp(-1.0))
    np.testing.assert_allclose(grad, [[p_top, p_top, -1.0, p_top * np.exp(-1.0)]], rtol=1e-6)


@pytest.mark.parametrize("name", ["mse", "softmax_cross_entropy"])
def test_per_sample_hessian_matches_second_differences(name):
    # Σₙ vₙᵀ Hₙ vₙ / N is the curvature of the batch mean along V: a witness sharing no
    # code with jax.hessian or the derivation
    loss = losses.get(name)
    z = _logits()
    y = _logits(seed=5) if name == "mse" else jnp.asarray([0, 3, 1, 2, 2, 0])
    v = finite_diff.random_direction(7, z)
    h = loss.hessian(z, y)
    curvature = float(jnp.einsum("ni,nij,nj->", v, h, v)) / z.shape[0]
    fd = finite_diff.directional_derivative(lambda u: loss.value(u, y), z, v, order=2)
    assert abs(fd - curvature) <= 1e-7 * float(jnp.linalg.norm(h)), (fd, curvature)


def test_cross_entropy_hessian_is_a_centred_psd_matrix():
    h = np.asarray(losses.softmax_cross_entropy.hessian(_logits(), jnp.zeros(6, jnp.int32)))
    np.testing.assert_allclose(h.sum(axis=2), 0.0, atol=1e-16)  # softmax is shift-invariant
    assert np.linalg.eigvalsh(h).min() > -1e-15


def test_batch_mean_couples_no_two_samples():
    # the registry's per-sample oracle reads only the diagonal blocks of jax.hessian
    z, y = _logits(), jnp.asarray([0, 3, 1, 2, 2, 0])
    full = np.asarray(jax.jit(jax.hessian(losses.softmax_cross_entropy.value))(z, y))
    off = full.copy()
    off[np.arange(6), :, np.arange(6), :] = 0.0
    assert np.abs(off).max() == 0.0 and np.abs(full).max() > 0.01


@pytest.mark.parametrize("labels, pattern", [
    (jnp.zeros(6, jnp.float64),
     r"y must be integer class labels .* got shape \(6,\) and dtype float64"),
    (jnp.zeros((6, 1), jnp.int32),
     r"y must have shape \(N,\) = \(6,\) to match logits \(6, 4\), got \(6, 1\)"),
    (jnp.asarray([0, 1, 2, 3, 4, 0]),
     r"y must hold labels in \[0, 4\) for logits \(6, 4\), got values in \[0, 4\]"),
    (jnp.asarray([0, -1, 2, 3, 1, 0]),
     r"y must hold labels in \[0, 4\) .* got values in \[-1, 3\]"),
])
def test_bad_labels_are_value_errors(labels, pattern):
    ce = losses.softmax_cross_entropy
    for fn in (ce.value, ce.grad, ce.hessian):
        with pytest.raises(ValueError, match=pattern):
            fn(_logits(), labels)


def test_out_of_range_labels_under_jit_give_nan_not_a_wrong_number():
    ce = losses.softmax_cross_entropy
    value, grad = jax.jit(lambda z, y: (ce.value(z, y), ce.grad(z, y)))(
        _logits(), jnp.asarray([0, 1, 2, 3, 4, 0]))
    assert np.isnan(value) and np.isnan(grad).all()


@pytest.mark.parametrize("logits, y, pattern", [
    (np.ones((3, 2)), np.ones((3, 3)),
     r"y must have the shape of logits \(3, 2\) for mse, got \(3, 3\)"),
    (np.ones((3, 2)), np.ones((3, 2), np.float32),
     r"y must have the dtype of logits \(float64\), got float32"),
    (np.ones((3, 2)), np.ones((3, 2), np.int32),
     r"y must be a floating-point array, got shape \(3, 2\) and dtype int32"),
    (np.ones(3), np.ones(3), r"logits must have rank 2, got shape \(3,\)"),
])
def test_bad_mse_arguments_are_value_errors(logits, y, pattern):
    with pytest.raises(ValueError, match=pattern):
        losses.mse.grad(jnp.asarray(logits), jnp.asarray(y))


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"loss must be one of .* got 'hinge'"):
        losses.get("hinge")


# --- the extension point: a user's Loss ------------------------------------------------------

def _half_square():
    return losses.Loss("half_sq", value=lambda z, y: 0.5 * jnp.sum((z - y) ** 2) / z.shape[0],
                       grad=lambda z, y: (z - y) / z.shape[0],
                       hessian=lambda z, y: jnp.broadcast_to(jnp.eye(z.shape[1], dtype=z.dtype),
                                                             z.shape + z.shape[1:]))


def test_a_user_loss_needs_a_name_and_three_functions():
    with pytest.raises(ValueError, match="Loss name must be a string, got NoneType"):
        losses.Loss(None, jnp.sum, jnp.sum, jnp.sum)
    with pytest.raises(ValueError, match=r"Loss 'mine': grad must be callable, got str"):
        losses.Loss("mine", jnp.sum, "grad", jnp.sum)
    with pytest.raises(ValueError, match="check must be callable or None"):
        losses.Loss("mine", jnp.sum, jnp.sum, jnp.sum, check=3)
    mine = _half_square()
    assert losses.get(mine) is mine and repr(mine) == "Loss('half_sq')"
    assert repr(losses.mse) == "manual.losses.mse"


def test_a_user_loss_is_checked_by_default():
    # logits float (N, M) and y with N rows, at trace time, before the user's code runs
    mine = _half_square()
    z = _logits()
    np.testing.assert_allclose(mine.grad(z, z + 1), losses.mse.grad(z, z + 1), rtol=1e-15)
    with pytest.raises(ValueError, match=r"y must have one row per sample \(6\) to match "
                                         r"logits \(6, 4\), got shape \(5, 4\)"):
        mine.value(z, z[:5])
    with pytest.raises(ValueError, match=r"logits must be a floating-point array"):
        mine.hessian(jnp.ones((6, 4), jnp.int32), z)
    with pytest.raises(ValueError, match=r"logits must have rank 2"):
        jax.jit(mine.grad)(z[0], z[0])


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy", "user"])
def test_hessian_vector_product_is_the_hessian_times_v(loss):
    # mse and cross-entropy write H v without forming H; a user's Loss falls back to H @ v
    fn = _half_square() if loss == "user" else losses.get(loss)
    z, v = _logits(), _logits(seed=8)
    y = jnp.asarray([0, 3, 1, 2, 2, 0]) if loss == "softmax_cross_entropy" else _logits(seed=5)
    hv = fn.hessian_vp(z, y, v)
    np.testing.assert_allclose(hv, np.einsum("nab,nb->na", fn.hessian(z, y), v), rtol=1e-14,
                               atol=1e-15)
