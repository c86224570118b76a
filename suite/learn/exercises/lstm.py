"""Exercise: one LSTM step, its gates and its cell's two paths."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/lstm.py"


def inputs():
    """x (3, 2), h0 (3, 4), c0 (3, 4), W_x (2, 16), W_h (4, 16), float64."""
    k = jax.random.split(jax.random.PRNGKey(9), 5)
    return (jax.random.normal(k[0], (3, 2), jnp.float64),
            0.5 * jax.random.normal(k[1], (3, 4), jnp.float64),
            0.5 * jax.random.normal(k[2], (3, 4), jnp.float64),
            jax.random.normal(k[3], (2, 16), jnp.float64) / 2,
            jax.random.normal(k[4], (4, 16), jnp.float64) / 2)


EXERCISE = register(Exercise(
    name="lstm", family="lstm", arguments=("x", "h0", "c0", "w_x", "w_h"),
    source="Hochreiter & Schmidhuber 1997; the BPTT of manual/lstm.py", inputs=inputs,
    steps=(
        Step("do", "o", "dh * jnp.tanh(c)", M, ("do   = dh * tanh(c_t)",),
             "tanh_c * o * (1.0 - o)],", "dE/do, the output gate"),
        Step("dc", "c", "dc_out + dh * o * (1 - jnp.tanh(c) ** 2)", M,
             ("dc   = gc_t + dh * o * (1 - tanh(c_t)**2)",),
             "dc = gc_t + dh * o_tanh_prime_t", "dE/dc, both paths"),
        Step("di", "i", "dc * g", M, ("di, df, dg = dc * g, dc * c_{t-1}, dc * i",),
             "g * i * (1.0 - i),", "dE/di, the input gate"),
        Step("df", "f", "dc * c0", M, ("di, df, dg = dc * g, dc * c_{t-1}, dc * i",),
             "c_prev * f * (1.0 - f),", "dE/df, the forget gate"),
        Step("dg", "g", "dc * i", M, ("di, df, dg = dc * g, dc * c_{t-1}, dc * i",),
             "i * (1.0 - g * g),", "dE/dg, the candidate"),
        Step("delta", "z", "jnp.concatenate([di * i * (1 - i), df * f * (1 - f), "
             "dg * (1 - g**2), do * o * (1 - o)], axis=1)", M,
             ("delta_t = [di * i(1-i), df * f(1-f), dg * (1-g**2), do * o(1-o)]",),
             "delta_t = (jnp.concatenate([dc, dc, dc, dh], axis=1)", "dE/dz, (N, 4H)"),
        Step("dw_x", "w_x", "x.T @ delta", M, ("dW_x = Σ_t x_tᵀ delta_t",),
             '"w_x": _transposed(xs.reshape(steps * n, d)) @ delta', "dE/dW_x"),
        Step("dw_h", "w_h", "h0.T @ delta", M, ("dW_h = Σ_t h_{t-1}ᵀ delta_t",),
             '"w_h": _transposed(h_prevs.reshape(steps * n, h)) @ delta', "dE/dW_h"),
    ),
    # the cell's own outside gradient dropped: only the path through h
    planted=Planted("dc", "dh * o * (1 - jnp.tanh(c) ** 2)", None),
))
