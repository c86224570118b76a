"""manual.linear beyond the registry: bad input, and the forward against plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import linear

N, D, M = 4, 3, 2


def _good(dtype=jnp.float64):
    rng = np.random.default_rng(1)
    return [jnp.asarray(rng.normal(size=s), dtype) for s in ((N, D), (D, M), (M,), (N, M))]


def test_forward_matches_numpy():
    x, w, b, _ = _good()
    expected = np.asarray(x) @ np.asarray(w) + np.asarray(b)
    np.testing.assert_allclose(linear.forward(x, w, b), expected, rtol=1e-15, atol=1e-15)


def test_dtype_is_preserved():
    for dtype in (jnp.float32, jnp.float64):
        x, w, b, dy = _good(dtype)
        assert linear.forward(x, w, b).dtype == dtype
        assert all(g.dtype == dtype for g in linear.backward(x, w, b, dy))


@pytest.mark.parametrize("which, bad, pattern", [
    (0, np.ones((N, D, 1)), r"x must have rank 2, got shape \(4, 3, 1\)"),
    (1, np.ones(D), r"w must have rank 2, got shape \(3,\)"),
    (2, np.ones((M, 1)), r"b must have rank 1, got shape \(2, 1\)"),
    (3, np.ones(M), r"dy must have rank 2, got shape \(2,\)"),
    (1, np.ones((D + 1, M)),
     r"w must have shape \(D, M\) with D = x.shape\[1\] = 3, got x \(4, 3\) and w \(4, 2\)"),
    (2, np.ones(M + 1), r"b must have shape \(M,\) = \(2,\) to match w \(3, 2\), got \(3,\)"),
    (3, np.ones((N, M + 1)), r"dy must have the shape of y .* \(4, 2\), got \(4, 3\)"),
    (0, np.ones((N, D), np.int32),
     r"x must be a floating-point array, got shape \(4, 3\) and dtype int32"),
    (3, np.ones((N, M), np.float32), r"share one floating dtype, got .*dy: float32"),
])
def test_bad_input_is_a_value_error_naming_the_argument(which, bad, pattern):
    args = _good()
    args[which] = jnp.asarray(bad)
    with pytest.raises(ValueError, match=pattern):
        linear.backward(*args)
    if which < 3:
        with pytest.raises(ValueError, match=pattern):
            linear.forward(*args[:3])


def test_bad_input_is_caught_at_trace_time_under_jit():
    x, w, b, dy = _good()
    with pytest.raises(ValueError, match="dy must have the shape"):
        jax.jit(linear.backward)(x, w, b, dy[:, :1])
