"""suite.check.check_backward: the old name, now a thin alias of check_vjp."""

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
    return dict(x=rng.normal(size=(5, 4)).astype(dtype), w=rng.normal(size=(4, 3)).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_correct_backward_passes(dtype):
    result = check_backward(forward, backward, _primals(dtype), batched=False)
    assert result.status == "PASS", str(result)
    assert result.dtype == np.dtype(dtype).name


def test_a_wrong_backward_fails_names_the_tensor_and_can_raise():
    def forgot_the_activation(x, w, dy):
        return dy @ w.T, x.T @ dy
    result = check_backward(forward, forgot_the_activation, _primals(), batched=False)
    assert result.status == "FAIL" and "  FAIL  x " in str(result), str(result)
    with pytest.raises(AssertionError, match="FAIL"):
        check_backward(forward, forgot_the_activation, _primals(), raise_on_fail=True,
                       batched=False)


def test_a_backward_with_too_few_entries_is_an_error_showing_both_structures():
    result = check_backward(forward, lambda x, w, dy: (dy @ w.T,), _primals(), batched=False)
    assert result.status == "ERROR"
    assert "expected: (x: float64[5, 4], w: float64[4, 3])" in result.message
    assert "got:      (float64[5, 4],)" in result.message


def test_bad_arguments():
    with pytest.raises(ValueError, match="primals must be a non-empty dict"):
        check_backward(forward, backward, [jnp.ones(2)])
