"""Exercise: the MLP's costate recursion δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/mlp.py"


def inputs():
    """x (8, 3), W1 (3, 4), b1 (4,), W2 (4, 2), b2 (2,), float64."""
    k = jax.random.split(jax.random.PRNGKey(4), 5)
    return (jax.random.normal(k[0], (8, 3), jnp.float64),
            jax.random.normal(k[1], (3, 4), jnp.float64) / 2,
            0.1 * jax.random.normal(k[2], (4,), jnp.float64),
            jax.random.normal(k[3], (4, 2), jnp.float64) / 2,
            0.1 * jax.random.normal(k[4], (2,), jnp.float64))


EXERCISE = register(Exercise(
    name="mlp", family="mlp", arguments=("x", "w1", "b1", "w2", "b2"),
    source="Hoey, Derivation of Backpropagation Equations; Grosse, Lecture 6", inputs=inputs,
    steps=(
        Step("delta_L", "z2", "dE * (z2 - Y) / N", M, ("δ_L     = ∂loss/∂z_L",),
             "delta = _losses.get(loss).grad(z[-1], y)", "δ_L = ∂E/∂z_2"),
        Step("dw2", "w2", "a1.T @ delta_L", M, ("∂E/∂W_l = a_{l-1}ᵀ δ_l",),
             "grads.append((_weight_decay(a[l].T @ delta", "∂E/∂W_2"),
        Step("db2", "b2", "jnp.sum(delta_L, axis=0)", M, ("∂E/∂b_l = Σₙ δ_l,n",),
             "delta.sum(axis=0)))", "∂E/∂b_2"),
        Step("delta_l", "z1", "(1 - a1**2) * (delta_L @ w2.T)", M,
             ("δ_l     = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)",),
             "delta = acts[l - 1].df_from(z[l - 1], a[l]) * (delta @ w.T)",
             "δ_1 = ∂E/∂z_1, the recursion"),
        Step("dw1", "w1", "x.T @ delta_l", M, ("∂E/∂W_l = a_{l-1}ᵀ δ_l",),
             "grads.append((_weight_decay(a[l].T @ delta", "∂E/∂W_1"),
        Step("db1", "b1", "jnp.sum(delta_l, axis=0)", M, ("∂E/∂b_l = Σₙ δ_l,n",),
             "delta.sum(axis=0)))", "∂E/∂b_1"),
    ),
    # the recursion without f'(z_1): the costate passed through the weights only
    planted=Planted("delta_l", "delta_L @ w2.T", None),
))
