"""Exercise: backprop through time of an Elman RNN, unrolled (d2l 9.7)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/rnn.py"


def inputs():
    """xs (3, 2, 3), h0 (2, 4), W_xh (3, 4), W_hh (4, 4), float64."""
    k = jax.random.split(jax.random.PRNGKey(8), 4)
    return (jax.random.normal(k[0], (3, 2, 3), jnp.float64),
            0.5 * jax.random.normal(k[1], (2, 4), jnp.float64),
            jax.random.normal(k[2], (3, 4), jnp.float64) / 2,
            jax.random.normal(k[3], (4, 4), jnp.float64) / 2)


EXERCISE = register(Exercise(
    name="rnn", family="rnn", arguments=("xs", "h0", "w_xh", "w_hh"),
    source="d2l.ai 9.7, Backpropagation Through Time", inputs=inputs,
    steps=(
        Step("dh_t", "h[0-9]+", "dhs[t] + (deltas[t + 1] @ w_hh.T if t + 1 < T else 0.0)", M,
             ("g_{t-1}   = omega_t * delta_t W_hhᵀ",), "g_prev = delta_t @ w_hh_t",
             "dE/dh_t, from outside and from step t+1"),
        Step("delta_t", "z[0-9]+", "dh_t * (1 - hs[t] ** 2)", M,
             ("delta_t   = (dh_t + g_t) * (1 - h_t**2)",),
             "delta_t = (dh_t + g_t) * (1.0 - h_t * h_t)", "dE/dz_t"),
        Step("dw_xh", "w_xh", "sum(xs[t].T @ deltas[t] for t in range(T))", M,
             ("dW_xh = Σ_t x_tᵀ delta_t",), '"w_xh": xs.reshape(steps * n, d).T @ delta',
             "dE/dW_xh, summed over the steps"),
        Step("dw_hh", "w_hh", "sum(h_prev[t].T @ deltas[t] for t in range(T))", M,
             ("dW_hh = Σ_t h_{t-1}ᵀ delta_t",), '"w_hh": h_prev.T @ delta',
             "dE/dW_hh, summed over the steps"),
    ),
    # off by one step: h_t where the weight multiplies h_{t-1}
    planted=Planted("dw_hh", "sum(hs[t].T @ deltas[t] for t in range(T))", None),
))
