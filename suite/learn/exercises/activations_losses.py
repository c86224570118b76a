"""Exercise: tanh into softmax cross-entropy (activations and losses)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

A, L = "manual/activations.py", "manual/losses.py"


def inputs():
    """z (6, 4), v (4, 3), float64."""
    kz, kv = jax.random.split(jax.random.PRNGKey(2))
    return (jax.random.normal(kz, (6, 4), jnp.float64), jax.random.normal(kv, (4, 3), jnp.float64))


EXERCISE = register(Exercise(
    name="activations_losses", family="losses", arguments=("z", "v"),
    source="Sadowski, Notes on Backpropagation; Hoey; Grosse, Lecture 6", inputs=inputs,
    steps=(
        Step("ds", "s", "dE * (p - Y) / N", L, ("dE/dz  = (p - onehot(y)) / N",),
             "delta = (p - _onehot(y, m, z.dtype)) / n", "dE/ds, the logits"),
        Step("dv", "v", "a.T @ ds", "manual/linear.py", ("dW = Xᵀ dY",), "dw = x.T @ dy",
             "dE/dv"),
        Step("da", "a", "ds @ v.T", "manual/linear.py", ("dX = dY Wᵀ",), "dx = dy @ w.T",
             "dE/da"),
        Step("dz", "z", "da * (1 - a**2)", A, ("tanh        t = tanh z",),
             "return (1 - t) * (1 + t)", "dE/dz, through tanh"),
    ),
    # the batch mean forgotten: p - y without its 1/N
    planted=Planted("ds", "dE * (p - Y)", "N"),
))
