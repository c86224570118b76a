"""Exercise: layer norm, the fused backward dx = (g - mean g - x̂ mean(g x̂)) / sigma."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/layernorm.py"


def inputs():
    """x (6, 5), gamma (5,), beta (5,), float64."""
    kx, kg, kb = jax.random.split(jax.random.PRNGKey(5), 3)
    return (0.5 + 1.5 * jax.random.normal(kx, (6, 5), jnp.float64),
            1.0 + 0.2 * jax.random.normal(kg, (5,), jnp.float64),
            0.1 * jax.random.normal(kb, (5,), jnp.float64))


EXERCISE = register(Exercise(
    name="layernorm", family="layernorm", arguments=("x", "gamma", "beta"),
    source="Ba, Kiros & Hinton 2016; the cs231n batch-norm derivation on rows", inputs=inputs,
    steps=(
        Step("dbeta", "beta", "jnp.sum(dy, axis=0)", M, ("dbeta  = Σ_rows dy",),
             "dbeta = jnp.sum(dy, axis=rows)", "dE/dbeta"),
        Step("dgamma", "gamma", "jnp.sum(dy * xhat, axis=0)", M, ("dgamma = Σ_rows dy ⊙ x̂",),
             "dgamma = jnp.sum(dy * (xc * rstd), axis=rows)", "dE/dgamma"),
        Step("dxhat", "xhat", "gamma * dy", M, ("g      = gamma ⊙ dy",),
             "g = _row(gamma, x.ndim) * dy", "dE/dxhat"),
        Step("dx", "x", "(dxhat - jnp.mean(dxhat, axis=-1, keepdims=True) "
             "- xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True)) / sigma", M,
             ("dx     = (g - mean_j(g) - x̂ ⊙ mean_j(g ⊙ x̂)) / sigma",),
             "dx = rstd * (g - jnp.mean(g, axis=axes, keepdims=True)) - xc * row_term",
             "dE/dx, through mu and sigma too"),
    ),
    # the path through mu forgotten: the mean of g is not subtracted
    planted=Planted("dx", "(dxhat - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True)) "
                    "/ sigma", "constant along axis"),
))
