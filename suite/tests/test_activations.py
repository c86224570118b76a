"""manual.activations beyond the registry: the kink convention, a finite-difference
witness for f' and f'', df_from, dtypes, unknown names.

The registry's mlp/act/* rows compare f, f', f'' with jax.nn and jax.grad; here float64
central differences (sharing no code with either) check the derivatives once more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import activations

NAMES = sorted(activations.ACTIVATIONS)


def _z(dtype=jnp.float64, n=257):
    # |z| in [0.05, 6], away from the kink at 0 by far more than the steps below
    rng = np.random.default_rng(3)
    mag = rng.uniform(0.05, 6.0, n)
    return jnp.asarray(np.where(rng.random(n) < 0.5, -mag, mag), dtype)


def _richardson(estimate, h):
    return (4.0 * estimate(h / 2.0) - estimate(h)) / 3.0


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_central_differences(name):
    act = activations.get(name)
    z = np.asarray(_z())

    def f(u):
        return np.asarray(act.f(jnp.asarray(u)))

    df = _richardson(lambda h: (f(z + h) - f(z - h)) / (2 * h), 1e-3)
    d2f = _richardson(lambda h: (f(z + h) - 2 * f(z) + f(z - h)) / h**2, 4e-3)
    # first differences are good to ~1e-12 of f's scale, second to ~1e-9 (see
    # reference/finite_diff.py); a wrong term is off by O(1)
    np.testing.assert_allclose(act.df(jnp.asarray(z)), df, rtol=0, atol=1e-9)
    np.testing.assert_allclose(act.d2f(jnp.asarray(z)), d2f, rtol=0, atol=1e-6)


def test_kink_convention_follows_jax():
    """ReLU'(0) = 0 (jax.nn.relu's custom derivative); leaky ReLU'(0) = 1 (where(z >= 0))."""
    for dtype in (jnp.float32, jnp.float64):
        zero = jnp.zeros((1,), dtype)
        assert activations.relu.df(zero).tolist() == [0.0]
        assert activations.leaky_relu.df(zero).tolist() == [1.0]
        assert activations.relu.d2f(zero).tolist() == [0.0]
        assert activations.leaky_relu.d2f(zero).tolist() == [0.0]
        assert float(jax.grad(jax.nn.relu)(zero[0])) == 0.0
        leaky = jax.grad(lambda u: jax.nn.leaky_relu(u, activations.LEAKY_SLOPE))
        assert float(leaky(zero[0])) == 1.0
        # just either side of the kink, the ordinary slopes
        eps = jnp.asarray([-1e-30, 1e-30], dtype)
        assert activations.relu.df(eps).tolist() == [0.0, 1.0]
        np.testing.assert_allclose(activations.leaky_relu.df(eps), [activations.LEAKY_SLOPE, 1.0])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_preserved_and_df_from_output_agrees(name, dtype):
    act = activations.get(name)
    z = _z(dtype)
    a = act.f(z)
    for out in (a, act.df(z), act.d2f(z), act.df_from(z, a)):
        assert out.dtype == dtype and out.shape == z.shape
    tol = 1e-6 if dtype == jnp.float32 else 1e-15
    np.testing.assert_allclose(act.df_from(z, a), act.df(z), rtol=tol, atol=tol)


def test_unknown_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'swish'"):
        activations.get("swish")


# --- the extension point: a user's Activation, one per hidden layer -------------------------

def test_a_user_activation_needs_a_name_and_three_functions():
    with pytest.raises(ValueError, match="Activation name must be a string, got int"):
        activations.Activation(3, jnp.tanh, jnp.tanh, jnp.tanh)
    with pytest.raises(ValueError, match=r"Activation 'mine': d2f must be callable, got float"):
        activations.Activation("mine", jnp.tanh, jnp.tanh, 2.0)
    with pytest.raises(ValueError, match="df_from_output must be callable or None"):
        activations.Activation("mine", jnp.tanh, jnp.tanh, jnp.tanh, df_from_output=1)
    mine = activations.Activation("mine", jnp.sin, jnp.cos, lambda z: -jnp.sin(z))
    assert activations.get(mine) is mine and repr(mine) == "Activation('mine')"
    z = _z()
    np.testing.assert_array_equal(mine.df_from(z, mine.f(z)), jnp.cos(z))  # falls back to df
    assert repr(activations.tanh) == "manual.activations.tanh"


def test_per_layer_resolves_names_objects_and_sequences():
    mine = activations.Activation("mine", jnp.sin, jnp.cos, lambda z: -jnp.sin(z))
    assert activations.per_layer("tanh", 3) == (activations.tanh,) * 3
    assert activations.per_layer(mine, 2) == (mine, mine)
    assert activations.per_layer(["relu", mine], 2) == (activations.relu, mine)
    assert activations.per_layer(("gelu",), 1) == (activations.gelu,)
    assert activations.per_layer((), 0) == () and activations.per_layer("tanh", 0) == ()


@pytest.mark.parametrize("activation, pattern", [
    (("tanh",), r"one entry per hidden layer \(2\), got 1: \['tanh'\]"),
    (["tanh", "swish"], r"activation must be one of .* got 'swish'"),
    ({"tanh"}, r"a sequence with one per hidden layer, got set"),
    (None, r"got NoneType"),
])
def test_bad_per_layer_activations_are_value_errors(activation, pattern):
    with pytest.raises(ValueError, match=pattern):
        activations.per_layer(activation, 2)


@pytest.mark.parametrize("name", NAMES)
def test_d2f_from_output_agrees(name):
    act = activations.get(name)
    z = _z()
    np.testing.assert_allclose(act.d2f_from(z, act.f(z)), act.d2f(z), rtol=1e-13, atol=1e-15)
