"""suite.check: a user's own backward pass through the suite's machinery."""

import jax.numpy as jnp
import numpy as np
import pytest

from suite.check import check_backward


def forward(x, w):
    return jnp.tanh(x @ w)


def backward(x, w, dy):
    dz = dy * (1 - jnp.tanh(x @ w) ** 2)
    return dz @ w.T, x.T @ dz


def _primals(dtype=np.float64):
    rng = np.random.default_rng(3)
    return dict(x=jnp.asarray(rng.normal(size=(5, 4)), dtype), w=jnp.asarray(rng.normal(size=(4, 3)), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_correct_backward_passes(dtype):
    row = check_backward(forward, backward, _primals(dtype))
    assert row["status"] == "PASS", row["message"]
    assert row["dtype"] == np.dtype(dtype).name


def test_a_wrong_backward_fails_and_can_raise():
    def forgot_the_activation(x, w, dy):
        return dy @ w.T, x.T @ dy
    row = check_backward(forward, forgot_the_activation, _primals())
    assert row["status"] == "FAIL" and ".dx" in row["message"]
    with pytest.raises(AssertionError, match="FAIL"):
        check_backward(forward, forgot_the_activation, _primals(), raise_on_fail=True)


def test_a_crashing_backward_is_an_error_row():
    row = check_backward(forward, lambda x, w, dy: (dy @ w,), _primals())
    assert row["status"] in ("ERROR", "FAIL")


def test_bad_arguments():
    with pytest.raises(ValueError, match="primals must be a non-empty dict"):
        check_backward(forward, backward, [jnp.ones(2)])
    with pytest.raises(ValueError, match="share one floating dtype"):
        check_backward(forward, backward, dict(x=jnp.ones((2, 2)), w=jnp.ones((2, 2), jnp.float32)))
