"""manual.batchnorm beyond the registry: the forward against numpy in both layouts, the
staged and fused forms against each other, the two-sample collapse, planted bugs, bad
input.

The planted bugs live in a plain numpy backward (``np_backward``): right, it agrees with
the autodiff oracle to float64 tolerance; with each classic mistake (Bessel's
correction, a forgotten path through the mean or the variance), the suite's comparison
fails it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import batchnorm
from suite import cases as registry
from suite import compare as cmp

EPS = 1e-5
IMPLEMENTATIONS = {"staged": batchnorm.backward, "fast": batchnorm.backward_fast}


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _feature(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def np_forward(x, gamma, beta, eps=EPS):
    mu = x.mean(_axes(x), keepdims=True)
    var = ((x - mu) ** 2).mean(_axes(x), keepdims=True)
    return _feature(gamma, x.ndim) * (x - mu) / np.sqrt(var + eps) + _feature(beta, x.ndim)


def np_backward(x, gamma, dy, eps=EPS, bug=None):
    """cs231n's fused backward in numpy, with switches for the classic mistakes."""
    x, gamma, dy = (np.asarray(a, np.float64) for a in (x, gamma, dy))
    axes = _axes(x)
    m = x.size // x.shape[1]
    # Bessel's correction: the unbiased variance (1/(M-1)) where training mode divides by M
    m_var = m - 1 if bug == "bessel_correction" else m
    xmu = x - x.mean(axes, keepdims=True)
    sigma = np.sqrt((xmu ** 2).sum(axes, keepdims=True) / m_var + eps)
    x_hat = xmu / sigma
    dbeta, dgamma = dy.sum(axes), (dy * x_hat).sum(axes)
    dx_hat = _feature(gamma, x.ndim) * dy
    mean_term = 0.0 if bug == "no_mean_term" else dx_hat.sum(axes, keepdims=True) / m
    var_term = (0.0 if bug == "no_variance_term"
                else x_hat * (dx_hat * x_hat).sum(axes, keepdims=True) / m_var)
    return (dx_hat - mean_term - var_term) / sigma, dgamma, dbeta


@functools.lru_cache(maxsize=None)
def _case(name):
    """(inputs, oracle) of a registered case in float64, the oracle compiled once."""
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, tuple(np.asarray(leaf) for leaf in jax.jit(case.reference)(inputs))


def _judge(out, reference):  # leaves [0], [1], [2]: dx, dgamma, dbeta
    return cmp.compare(tuple(out), tuple(reference), "float64")


NAMES = ["batchnorm/NCHW", "batchnorm/near-constant"]  # NCHW and (N, D)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_backward_agrees_with_autodiff(name):
    inputs, reference = _case(name)
    assert _judge(np_backward(inputs["x"], inputs["gamma"], inputs["dy"]), reference).passed


@pytest.mark.parametrize("bug", ["bessel_correction", "no_mean_term", "no_variance_term"])
@pytest.mark.parametrize("name", NAMES)
def test_planted_bug_fails(name, bug):
    inputs, reference = _case(name)
    out = np_backward(inputs["x"], inputs["gamma"], inputs["dy"], bug=bug)
    result = _judge(out, reference)
    assert not result.passed and "[0]:" in result.message, f"{bug} was not caught on {name}"


def test_forward_matches_numpy_and_the_two_backwards_agree():
    inputs, reference = _case("batchnorm/NCHW")
    args = tuple(inputs[k] for k in ("x", "gamma", "beta"))
    y, staged, fast = jax.jit(lambda x, g, b, dy: (
        batchnorm.forward(x, g, b), batchnorm.backward(x, g, b, dy),
        batchnorm.backward_fast(x, g, b, dy)))(*args, inputs["dy"])
    np.testing.assert_allclose(y, np_forward(*map(np.asarray, args)), rtol=1e-13, atol=1e-14)
    assert _judge(staged, fast).passed
    # the feature axis is axis 1: a per-channel loop over (N, H, W) gives the same y
    x = np.asarray(args[0])
    for c in range(x.shape[1]):
        xc = x[:, c]
        x_hat = (xc - xc.mean()) / np.sqrt(xc.var() + EPS)
        np.testing.assert_allclose(y[:, c], x_hat * float(args[1][c]) + float(args[2][c]),
                                   rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("implementation", ["staged", "fast"])
def test_two_samples_collapse_dx_to_order_eps(implementation):
    # With N = 2, x̂ = ±sqrt(var / (var + eps)) whatever x is: dx = gamma (dy_1 - dy_2)
    # eps / (2 sigma (var + eps)) for sample 1, the remainder of a cancellation of
    # O(1) terms, which is why the registry's N = 2 case takes eps = 0.5.
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    gamma = 1.0 + 0.1 * rng.standard_normal(5)
    dx, _, _ = IMPLEMENTATIONS[implementation](*map(jnp.asarray, (x, gamma, np.zeros(5), dy)))
    var = ((x[0] - x[1]) / 2) ** 2
    sigma = np.sqrt(var + EPS)
    closed = gamma * (dy[0] - dy[1]) * EPS / (2 * sigma * (var + EPS))
    # ~5 of the 16 digits cancel: 1e-9 relative is what float64 has left
    np.testing.assert_allclose(dx[0], closed, rtol=1e-9)
    np.testing.assert_allclose(dx[1], -closed, rtol=1e-9)


def test_dtype_is_preserved():
    x = jax.ShapeDtypeStruct((2, 3, 4, 4), jnp.float32)
    v = jax.ShapeDtypeStruct((3,), jnp.float32)
    for backward in IMPLEMENTATIONS.values():
        out = jax.eval_shape(backward, x, v, v, x)
        assert [(leaf.shape, leaf.dtype) for leaf in out] == [
            ((2, 3, 4, 4), jnp.float32), ((3,), jnp.float32), ((3,), jnp.float32)]


def _good():
    return [jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), jnp.ones((4, 3))]


def _with(**kw):
    args = _good()
    for i, name in enumerate(("x", "gamma", "beta", "dy")):
        if name in kw:
            args[i] = jnp.asarray(kw[name])
    return args


@pytest.mark.parametrize("args, pattern", [
    (_with(gamma=np.ones(4)), r"gamma must have shape \(D,\) = \(3,\) with x.shape\[1\] of x "
                              r"\(4, 3\), got \(4,\)"),
    (_with(x=np.ones((2, 3, 4, 4)), dy=np.ones((2, 3, 4, 4)), gamma=np.ones(4)),
     r"gamma must have shape \(C,\) = \(3,\).*got \(4,\)"),
    (_with(beta=np.ones(2)), r"beta must have shape \(D,\) = \(3,\).*got \(2,\)"),
    (_with(x=np.ones((4, 3, 2)), dy=np.ones((4, 3, 2))),
     r"x must have rank 2 \(N, D\) or rank 4 \(N, C, H, W\), got shape \(4, 3, 2\)"),
    (_with(gamma=np.ones((3, 1))), r"gamma must have rank 1"),
    (_with(x=np.ones((4, 3), np.int32)), r"x must be a floating-point array"),
    (_with(beta=np.zeros(3, np.float32)), r"share one floating dtype, got .*beta: float32"),
    (_with(dy=np.ones((3, 4))), r"dy must have the shape of x \(and y\), \(4, 3\), got \(3, 4\)"),
])
@pytest.mark.parametrize("implementation", ["staged", "fast"])
def test_bad_input_is_a_value_error_naming_the_argument(implementation, args, pattern):
    with pytest.raises(ValueError, match=pattern):
        IMPLEMENTATIONS[implementation](*args)
    if "dy" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            batchnorm.forward(*args[:3])


def test_bad_eps_is_a_value_error():
    with pytest.raises(ValueError, match="eps must be a positive number, got 0"):
        batchnorm.backward_fast(*_good(), eps=0)


@pytest.mark.parametrize("shape", [(1, 8), (1, 3, 1, 1)])
def test_training_with_one_value_per_channel_raises_as_torch(shape):
    # torch: "Expected more than 1 value per channel when training"; here y would be beta
    x, c = jnp.ones(shape), shape[1]
    with pytest.raises(ValueError, match=r"x: Expected more than 1 value per channel when "
                                         r"training, got x of shape \(1, "):
        batchnorm.forward(x, jnp.ones(c), jnp.zeros(c))
    for backward in IMPLEMENTATIONS.values():
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            backward(x, jnp.ones(c), jnp.zeros(c), x)
    # evaluation mode takes no statistic from the batch: one sample is fine
    y = batchnorm.eval_forward(x, jnp.ones(c), jnp.zeros(c), jnp.zeros(c), jnp.ones(c), eps=0.5)
    np.testing.assert_allclose(y, np.full(shape, 1 / np.sqrt(1.5)), rtol=1e-14)


def np_eval_backward(x, gamma, mean, var, dy, eps=EPS, bug=None):
    """Evaluation mode's backward in numpy, with the classic mistake: the batch statistics'
    paths (training mode's Jacobian) where the running statistics are constants."""
    x, gamma, mean, var, dy = (np.asarray(a, np.float64) for a in (x, gamma, mean, var, dy))
    axes = _axes(x)
    if bug == "training_jacobian":
        return np_backward(x, gamma, dy, eps)
    r = 1 / np.sqrt(_feature(var, x.ndim) + eps)
    return (_feature(gamma, x.ndim) * r * dy,
            (dy * (x - _feature(mean, x.ndim)) * r).sum(axes), dy.sum(axes))


def test_eval_mode_numpy_backward_and_planted_bug():
    case = registry.get("batchnorm/eval/NCHW")
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    reference = jax.jit(case.reference)(inputs)
    args = [inputs[k] for k in ("x", "gamma", "mean", "var", "dy")]
    assert cmp.compare(tuple(np_eval_backward(*args)), tuple(reference), "float64").passed
    wrong = np_eval_backward(*args, bug="training_jacobian")
    assert not cmp.compare(tuple(wrong), tuple(reference), "float64").passed
    manual = batchnorm.eval_backward(*(inputs[k] for k in ("x", "gamma", "beta", "mean", "var",
                                                           "dy")))
    assert cmp.compare(tuple(manual), tuple(reference), "float64").passed


@pytest.mark.parametrize("name, value, pattern", [
    ("mean", np.ones(4), r"mean must have shape \(D,\) = \(3,\).*got \(4,\)"),
    ("var", np.ones((3, 1)), r"var must have rank 1"),
    ("var", np.ones(3, np.int32), r"var must be a floating-point array"),
])
def test_bad_running_statistics_are_value_errors(name, value, pattern):
    x, gamma, beta, dy = _good()
    stats = dict(mean=jnp.zeros(3), var=jnp.ones(3))
    stats[name] = jnp.asarray(value)
    with pytest.raises(ValueError, match=pattern):
        batchnorm.eval_forward(x, gamma, beta, stats["mean"], stats["var"])
    with pytest.raises(ValueError, match=pattern):
        batchnorm.eval_backward(x, gamma, beta, stats["mean"], stats["var"], dy)
