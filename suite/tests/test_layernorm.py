"""manual.layernorm beyond the registry: the forward against numpy, the two directions
the normalisation removes, planted bugs, bad input.

The planted bugs live in a plain numpy backward (``np_backward``, sharing no code with
manual/ or autodiff): right, it agrees with the autodiff oracle to float64 tolerance;
with each classic mistake, the suite's comparison fails it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import layernorm
from suite import cases as registry
from suite import compare as cmp

EPS = 1e-5


def np_forward(x, gamma, beta, eps=EPS):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def np_backward(x, gamma, beta, dy, eps=EPS, bug=None):
    """The textbook backward over the last axis, with switches for the classic mistakes."""
    x, gamma, dy = (np.asarray(a, np.float64) for a in (x, gamma, dy))
    axis = 0 if bug == "statistics_over_the_batch" else -1  # batch norm's axis by mistake
    mu = x.mean(axis, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(axis, keepdims=True) + eps)
    x_hat = (x - mu) / sigma
    rows = tuple(range(x.ndim - 1))
    dgamma = dy.sum(rows) if bug == "dgamma_without_x_hat" else (dy * x_hat).sum(rows)
    g = gamma * dy
    mean_term = 0.0 if bug == "no_mean_term" else g.mean(axis, keepdims=True)
    var_term = 0.0 if bug == "no_variance_term" else x_hat * (g * x_hat).mean(axis, keepdims=True)
    return (g - mean_term - var_term) / sigma, dgamma, dy.sum(rows)


@functools.lru_cache(maxsize=None)
def _case(name):
    """(inputs, oracle) of a registered case in float64, the oracle compiled once."""
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, tuple(np.asarray(leaf) for leaf in jax.jit(case.reference)(inputs))


def _judge(out, reference):
    return cmp.compare(tuple(out), tuple(reference), "float64")


@pytest.mark.parametrize("name", ["layernorm/rank3", "layernorm/near-constant"])
def test_numpy_backward_agrees_with_autodiff(name):
    inputs, reference = _case(name)
    out = np_backward(inputs["x"], inputs["gamma"], inputs["beta"], inputs["dy"])
    assert _judge(out, reference).passed


@pytest.mark.parametrize("bug", ["no_mean_term", "no_variance_term", "dgamma_without_x_hat",
                                 "statistics_over_the_batch"])
def test_planted_bug_fails(bug):
    inputs, reference = _case("layernorm/rank3")
    out = np_backward(inputs["x"], inputs["gamma"], inputs["beta"], inputs["dy"], bug=bug)
    assert not _judge(out, reference).passed, f"{bug} was not caught"


def test_forward_matches_numpy_and_dx_is_orthogonal_to_shift_and_scale():
    inputs, _ = _case("layernorm/rank3")
    x, gamma, beta, dy = (inputs[k] for k in ("x", "gamma", "beta", "dy"))
    y, (dx, _, _) = jax.jit(lambda *a: (layernorm.forward(*a[:3]), layernorm.backward(*a)))(
        x, gamma, beta, dy)
    x, gamma, dy, dx = map(np.asarray, (x, gamma, dy, dx))
    np.testing.assert_allclose(y, np_forward(x, gamma, np.asarray(beta)), rtol=1e-13, atol=1e-14)
    # Adding a constant to a row changes nothing: Σ_j dx_j = 0. Scaling the deviations
    # changes y only through eps: Σ_j dx_j (x_j - mu) = eps / (var + eps) Σ_j g_j x̂_j.
    xc = x - x.mean(-1, keepdims=True)
    var = (xc ** 2).mean(-1)
    x_hat = xc / np.sqrt(var + EPS)[..., None]
    tol = 1e-13 * np.abs(dx).max() * np.abs(xc).max() * x.shape[-1]
    np.testing.assert_allclose(dx.sum(-1), 0.0, atol=tol)
    np.testing.assert_allclose((dx * xc).sum(-1), EPS / (var + EPS) * (gamma * dy * x_hat).sum(-1),
                               rtol=1e-6, atol=tol)


def test_dtype_is_preserved():
    x = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    v = jax.ShapeDtypeStruct((4,), jnp.float32)
    assert jax.eval_shape(layernorm.forward, x, v, v).dtype == jnp.float32
    out = jax.eval_shape(layernorm.backward, x, v, v, x)
    assert [leaf.dtype for leaf in out] == [jnp.float32] * 3
    assert [leaf.shape for leaf in out] == [(3, 4), (4,), (4,)]


def _good():
    return [jnp.ones((3, 4)), jnp.ones(4), jnp.zeros(4), jnp.ones((3, 4))]


def _with(**kw):
    args = _good()
    for i, name in enumerate(("x", "gamma", "beta", "dy")):
        if name in kw:
            args[i] = jnp.asarray(kw[name])
    return args


@pytest.mark.parametrize("args, pattern", [
    (_with(gamma=np.ones(3)),
     r"gamma must have shape \(D,\) = \(4,\) with D the last axis of x \(3, 4\), got \(3,\)"),
    (_with(beta=np.ones(5)), r"beta must have shape \(D,\) = \(4,\).*got \(5,\)"),
    (_with(gamma=np.ones((1, 4))), r"gamma must have shape normalized_shape = \(3, 4\), the "
                                   r"trailing 2 axes of x \(3, 4\).*got \(1, 4\)"),
    (_with(gamma=np.ones((2, 3, 4))), r"x must have rank >= 3 \(..., \*normalized_shape\)"),
    (_with(gamma=np.float64(1.0)), r"gamma must have rank >= 1 \(normalized_shape\)"),
    (_with(x=np.float64(1.0)), r"x must have rank >= 1"),
    (_with(x=np.ones((3, 4), np.int32)), r"x must be a floating-point array"),
    (_with(gamma=np.ones(4, np.float32)), r"share one floating dtype, got .*gamma: float32"),
    (_with(dy=np.ones((4, 3))), r"dy must have the shape of x \(and y\), \(3, 4\), got \(4, 3\)"),
])
def test_bad_input_is_a_value_error_naming_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        layernorm.backward(*args)
    if "dy" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            layernorm.forward(*args[:3])


@pytest.mark.parametrize("eps", [0.0, -1e-5, "1e-5", None])
def test_bad_eps_is_a_value_error(eps):
    with pytest.raises(ValueError, match="eps must be a positive number"):
        layernorm.forward(*_good()[:3], eps=eps)


@jax.jit
def _multi_and_flat(x, gamma, beta, dy):
    flat = [a.reshape(s) for a, s in ((x, (3, 20)), (gamma, (20,)), (beta, (20,)), (dy, (3, 20)))]
    return (layernorm.forward(x, gamma, beta), layernorm.backward(x, gamma, beta, dy),
            layernorm.forward(*flat[:3]), layernorm.backward(*flat),
            layernorm.forward(x, gamma[0], beta[0]))


def test_several_normalized_axes_are_one_row():
    # normalising the trailing (4, 5) axes is normalising the flattened 20: same numbers
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    gamma, beta = 1 + 0.1 * rng.standard_normal((4, 5)), 0.1 * rng.standard_normal((4, 5))
    y, (dx, dgamma, _), flat, (fdx, fdgamma, _), last = _multi_and_flat(
        *(jnp.asarray(a) for a in (x, gamma, beta, dy)))
    np.testing.assert_allclose(y, np.asarray(flat).reshape(3, 4, 5), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx, np.asarray(fdx).reshape(3, 4, 5), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dgamma, np.asarray(fdgamma).reshape(4, 5), rtol=1e-12, atol=1e-13)
    # and the last axis alone is a different layer (the planted mistake: one axis only)
    assert float(jnp.max(jnp.abs(last - y))) > 1e-2
