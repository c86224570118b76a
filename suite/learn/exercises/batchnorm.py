"""Exercise: batch norm (training mode), ten staged steps, backprop-ninja style."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/batchnorm.py"


def inputs():
    """x (32, 4), gamma (4,), beta (4,), float64; features of unlike scale and offset."""
    kx, kg, kb = jax.random.split(jax.random.PRNGKey(22), 3)
    x = 1.0 + 2.0 * jax.random.normal(kx, (32, 4), jnp.float64)
    return (x, 1.0 + 0.1 * jax.random.normal(kg, (4,), jnp.float64),
            0.1 * jax.random.normal(kb, (4,), jnp.float64))


EXERCISE = register(Exercise(
    name="batchnorm", family="batchnorm", arguments=("x", "gamma", "beta"),
    source="Karpathy, makemore part 4 (backprop ninja); Ioffe & Szegedy 2015; cs231n",
    inputs=inputs,
    steps=(
        Step("dbeta", "beta", "jnp.sum(dy, axis=0)", M, ("dbeta  = Σ dy",), "dbeta = dy_sum",
             "dE/dbeta"),
        Step("dgamma", "gamma", "jnp.sum(dy * xhat, axis=0)", M, ("dgamma = Σ dy ⊙ x̂",),
             "dgamma = dy_xmu_sum * inv", "dE/dgamma"),
        Step("dxhat", "xhat", "gamma * dy", M, ("dx̂ = gamma ⊙ dy",), "dx_hat = g * dy",
             "dE/dxhat"),
        Step("dinv", "inv", "jnp.sum(dxhat * xmu, axis=0)", M, ("dinv   = Σ dx̂ ⊙ (x - mu)",),
             "dinv = g * dy_xmu_sum", "dE/d(1/sigma)"),
        Step("dsigma", "sigma", "-dinv / sigma**2", M, ("dsigma = -dinv / sigma²",),
             "dsigma = -dinv * inv * inv", "dE/dsigma"),
        Step("dvar", "var", "dsigma / (2 * sigma)", M, ("dvar = dsigma / (2 sigma)",),
             "dvar = 0.5 * dsigma * inv", "dE/dvar"),
        Step("dsq", "sq", "jnp.ones_like(sq) * dvar / N", M,
             ("var    = 1/M Σ (x - mu)²", "dxmu2  = 2 (x - mu) dvar / M"),
             "dxmu2 = (2.0 / m) * xmu * dvar", "dE/d(x - mu)², the variance step"),
        Step("dxmu", "xmu", "dxhat * inv + 2 * xmu * dsq", M,
             ("dxmu1  = dx̂ / sigma", "dxmu2  = 2 (x - mu) dvar / M"),
             "dxmu1 = dx_hat * inv", "dE/d(x - mu), both paths"),
        Step("dmu", "mu", "-jnp.sum(dxmu, axis=0)", M, ("dmu    = -Σ (dxmu1 + dxmu2)",),
             "dmu = -((g * dy_sum)", "dE/dmu"),
        Step("dx", "x", "dxmu + dmu / N", M, ("dx     = dxmu1 + dxmu2 + dmu / M",),
             "dx = dxmu1 + dxmu2 + dmu / m", "dE/dx"),
    ),
    # Bessel's correction where the forward has none: 1/(N-1) for 1/N in the variance step.
    planted=Planted("dsq", "jnp.ones_like(sq) * dvar / (N - 1)", "N/(N−1)"),
))
