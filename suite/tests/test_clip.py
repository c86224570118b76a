"""manual.clip: clipping by global norm against an independent numpy computation."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import clip

Pair = collections.namedtuple("Pair", ["w", "b"])
RNG = np.random.default_rng(7)


def _grads():
    """A nest of every container kind, two dtypes, and a None."""
    return {"rnn": {"w_xh": jnp.asarray(RNG.normal(size=(4, 5))),
                    "w_hh": jnp.asarray(RNG.normal(size=(5, 5)))},
            "layers": [Pair(jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32),
                            jnp.asarray(RNG.normal(size=2), jnp.float32))],
            "h0": (jnp.asarray(RNG.normal(size=(2, 5))), None)}


def _np_leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def _np_norm(tree):
    return np.sqrt(sum(np.sum(x * x) for x in _np_leaves(tree)))


def test_above_the_threshold_rescales_to_exactly_max_norm():
    grads = _grads()
    norm_np = _np_norm(grads)
    max_norm = 0.25 * norm_np
    clipped, norm = clip.clip_by_global_norm(grads, max_norm)
    assert norm.dtype == jnp.float64 and abs(float(norm) - norm_np) <= 1e-14 * norm_np
    assert jax.tree_util.tree_structure(clipped) == jax.tree_util.tree_structure(grads)
    pairs = zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(grads), strict=True)
    for got, leaf in pairs:
        assert got.dtype == leaf.dtype
        rtol = 1e-6 if leaf.dtype == jnp.float32 else 1e-14
        expected = np.asarray(leaf, np.float64) * (max_norm / norm_np)
        np.testing.assert_allclose(got, expected, rtol=rtol)
    assert _np_norm(clipped) == pytest.approx(max_norm, rel=1e-6)


def test_below_the_threshold_is_a_no_op_bit_for_bit():
    grads = _grads()
    clipped, norm = clip.clip_by_global_norm(grads, 2.0 * _np_norm(grads))
    pairs = zip(jax.tree_util.tree_leaves(clipped), jax.tree_util.tree_leaves(grads), strict=True)
    for got, leaf in pairs:
        assert np.array_equal(got, leaf) and got.dtype == leaf.dtype


def test_norm_is_global_not_per_leaf():
    # per-leaf clipping (a plausible mistake) would cap each leaf at max_norm separately
    grads = {"a": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([0.0, 4.0])}
    clipped, norm = clip.clip_by_global_norm(grads, 1.0)
    assert float(norm) == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [0.0, 0.8], rtol=1e-15)


def test_zero_gradient_stays_zero_and_finite():
    clipped, norm = clip.clip_by_global_norm({"w": jnp.zeros((2, 2))}, 1.0)
    assert float(norm) == 0.0 and np.array_equal(clipped["w"], np.zeros((2, 2)))


def test_jit_with_a_traced_threshold():
    grads = _grads()
    norm_np = _np_norm(grads)
    clipped, norm = jax.jit(clip.clip_by_global_norm)(grads, jnp.asarray(0.5 * norm_np))
    assert _np_norm(clipped) == pytest.approx(0.5 * norm_np, rel=1e-6)


@pytest.mark.parametrize("max_norm", [0.0, -1.0])
def test_non_positive_threshold_is_a_value_error(max_norm):
    with pytest.raises(ValueError, match=f"max_norm must be positive, got {max_norm}"):
        clip.clip_by_global_norm(_grads(), max_norm)


def test_integer_leaf_is_a_value_error_naming_its_path():
    with pytest.raises(ValueError, match=r"grads\['steps'\]\[1\] must be a floating-point array"):
        clip.clip_by_global_norm({"steps": [jnp.ones(2), jnp.ones(2, jnp.int32)]}, 1.0)
