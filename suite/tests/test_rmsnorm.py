"""manual.rmsnorm and manual.groupnorm beyond the registry: the forward against numpy
(torch's definitions), planted bugs in a numpy backward, eps=None, bad input.

Each planted bug is a classic mistake (RMSNorm with layer norm's mean term; group norm's
statistics per channel instead of per group; dgamma summed over the group instead of
the channel); the suite's comparison fails each against the registry's autodiff oracle.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import groupnorm, rmsnorm
from suite import cases as registry
from suite import compare as cmp

RMS, GROUP = "rmsnorm/rank3-normalized2", "groupnorm/N2-C6-G3-4x5"


@functools.lru_cache(maxsize=None)
def _case(name):
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, tuple(np.asarray(r) for r in jax.jit(case.reference)(inputs))


def np_rms_backward(x, gamma, dy, k, eps, bug=None):
    x, gamma, dy = (np.asarray(a, np.float64) for a in (x, gamma, dy))
    axes = tuple(range(x.ndim - k, x.ndim))
    r = 1 / np.sqrt((x * x).mean(axes, keepdims=True) + eps)
    g = gamma * dy
    dx = r * g - x * r ** 3 * (g * x).mean(axes, keepdims=True)
    if bug == "layernorm_mean_term":
        dx = dx - r * g.mean(axes, keepdims=True)
    return dx, (dy * x * r).sum(tuple(range(x.ndim - k)))


def np_group_backward(x, gamma, dy, groups, eps=1e-5, bug=None):
    x, gamma, dy = (np.asarray(a, np.float64) for a in (x, gamma, dy))
    n, c = x.shape[:2]
    size = c if bug == "per_channel_statistics" else groups
    xg, dyg = x.reshape(n, size, -1), dy.reshape(n, size, -1)
    mu = xg.mean(-1, keepdims=True)
    sigma = np.sqrt(((xg - mu) ** 2).mean(-1, keepdims=True) + eps)
    x_hat = ((xg - mu) / sigma).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    g = (gamma.reshape(shape) * dy).reshape(n, size, -1)
    xh = x_hat.reshape(n, size, -1)
    dx = ((g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True)) / sigma)
    axes = (0,) + tuple(range(2, x.ndim))
    dgamma = (dy * x_hat).sum(axes)
    if bug == "dgamma_per_group":
        dgamma = np.repeat(dgamma.reshape(groups, -1).sum(1), c // groups)
    return dx.reshape(x.shape), dgamma, dyg.reshape(dy.shape).sum(axes)


def _rms_args():
    inputs, reference = _case(RMS)
    return (inputs["x"], inputs["gamma"], inputs["dy"], 2, np.finfo(np.float64).eps), reference


def _group_args():
    inputs, reference = _case(GROUP)
    return (inputs["x"], inputs["gamma"], inputs["dy"], 3), reference


def test_numpy_backwards_agree_with_autodiff():
    args, reference = _rms_args()
    assert cmp.compare(np_rms_backward(*args), reference, "float64").passed
    args, reference = _group_args()
    assert cmp.compare(np_group_backward(*args), reference, "float64").passed


def test_planted_bugs_fail():
    args, reference = _rms_args()
    assert not cmp.compare(np_rms_backward(*args, bug="layernorm_mean_term"), reference,
                           "float64").passed
    # eps=None is the machine epsilon: with eps = 1e-5 (layer norm's) the numbers move
    assert not cmp.compare(np_rms_backward(*args[:4], 0.1), reference, "float64").passed
    args, reference = _group_args()
    for bug in ("per_channel_statistics", "dgamma_per_group"):
        assert not cmp.compare(np_group_backward(*args, bug=bug), reference, "float64").passed


def test_forwards_match_torchs_definitions_in_numpy():
    inputs, _ = _case(RMS)
    x, gamma = np.asarray(inputs["x"]), np.asarray(inputs["gamma"])
    eps = np.finfo(np.float64).eps
    want = x / np.sqrt((x * x).mean((1, 2), keepdims=True) + eps) * gamma
    np.testing.assert_allclose(jax.jit(rmsnorm.forward)(inputs["x"], inputs["gamma"]), want,
                               rtol=1e-13)
    # eps=None in float32 is float32's machine epsilon, 1.19e-7
    y32 = jax.jit(rmsnorm.forward)(inputs["x"].astype(jnp.float32),
                                   inputs["gamma"].astype(jnp.float32))
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, want, rtol=1e-5)
    inputs, _ = _case(GROUP)
    x, gamma, beta = (np.asarray(inputs[k]) for k in ("x", "gamma", "beta"))
    xg = x.reshape(2, 3, -1)
    xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5))
    want = xhat.reshape(x.shape) * gamma[None, :, None, None] + beta[None, :, None, None]
    forward = jax.jit(functools.partial(groupnorm.forward, groups=3))
    np.testing.assert_allclose(forward(inputs["x"], inputs["gamma"], inputs["beta"]), want,
                               rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("call, pattern", [
    (lambda: rmsnorm.forward(jnp.ones((3, 4)), jnp.ones(3)),
     r"gamma must have the shape of the trailing gamma.ndim = 1 axes of x \(3, 4\) \(\(4,\)\), "
     r"got \(3,\)"),
    (lambda: rmsnorm.forward(jnp.ones((3, 4)), jnp.ones(())), r"gamma must have rank >= 1"),
    (lambda: rmsnorm.forward(jnp.ones((3, 4)), jnp.ones(4), eps=0.0),
     r"eps must be a positive number, got 0.0"),
    (lambda: rmsnorm.backward(jnp.ones((3, 4)), jnp.ones(4), jnp.ones((4, 3))),
     r"dy must have the shape of x \(and y\), \(3, 4\), got \(4, 3\)"),
    (lambda: rmsnorm.forward(jnp.ones((3, 4), jnp.int32), jnp.ones(4)),
     r"x must be a floating-point array"),
    (lambda: groupnorm.forward(jnp.ones((2, 6, 3)), jnp.ones(6), jnp.zeros(6), groups=4),
     r"groups must divide C: groups=4 does not divide C = 6 of x \(2, 6, 3\)"),
    (lambda: groupnorm.forward(jnp.ones((2, 6, 3)), jnp.ones(6), jnp.zeros(6), groups=0),
     r"groups must be a positive int, got 0"),
    (lambda: groupnorm.forward(jnp.ones((2, 6, 3)), jnp.ones(3), jnp.zeros(6), groups=3),
     r"gamma must have shape \(C,\) = \(6,\) with C = x.shape\[1\] of x \(2, 6, 3\), got \(3,\)"),
    (lambda: groupnorm.forward(jnp.ones(6), jnp.ones(6), jnp.zeros(6), groups=3),
     r"x must have rank >= 2 \(N, C, \*spatial\)"),
    (lambda: groupnorm.backward(jnp.ones((2, 6)), jnp.ones(6), jnp.zeros(6), jnp.ones((2, 5)),
                                groups=3), r"dy must have the shape of x"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
