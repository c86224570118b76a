"""Exercise: the linear layer y = x w + b (Johnson)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/linear.py"


def inputs():
    """x (5, 3), w (3, 4), b (4,), float64."""
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(1), 3)
    return (jax.random.normal(kx, (5, 3), jnp.float64), jax.random.normal(kw, (3, 4), jnp.float64),
            jax.random.normal(kb, (4,), jnp.float64))


EXERCISE = register(Exercise(
    name="linear", family="linear", arguments=("x", "w", "b"),
    source="Johnson, Backpropagation for a Linear Layer (2017)", inputs=inputs,
    steps=(
        Step("dx", "x", "dy @ w.T", M, ("dX = dY Wᵀ",), "dx = dy @ w.T", "dE/dx"),
        Step("dw", "w", "x.T @ dy", M, ("dW = Xᵀ dY",), "dw = x.T @ dy", "dE/dw"),
        Step("db", "b", "jnp.sum(dy, axis=0)", M, ("db = Σₙ dYₙ",), "db = dy.sum(axis=0)",
             "dE/db"),
    ),
    # the bias's gradient averaged instead of summed over the batch
    planted=Planted("db", "jnp.mean(dy, axis=0)", "1/N"),
))
