# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: lstm
# ---

# %% [markdown]
# # LSTM: one step, its gates and its cell
#
# One LSTM step, row vectors, the four gates side by side in the order i, f, g, o:
#
#     z = x W_x + h0 W_h                              (N, 4H)
#     i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)   each (N, H)
#     c = f ⊙ c0 + i ⊙ g          h = o ⊙ tanh(c)      out = [h, c]   (N, 2H)
#
# Both h and c leave the step, so both get a gradient from outside: `dout = [dh, dc_out]`.
# Derive `do`, then `dc` (the cell's two paths meet there), `di`, `df`, `dg`, the
# pre-activation gradient `delta = dE/dz` (each gate's own derivative, from its output),
# and the weights' gradients. `x: (3, 2)`, `h0, c0: (3, 4)`, `W_x: (2, 16)`,
# `W_h: (4, 16)`.

# %%
import jax
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


# %%
def forward(x, h0, c0, w_x, w_h):
    w_x, w_h = suite.mark("w_x", w_x), suite.mark("w_h", w_h)
    H = h0.shape[1]
    z = suite.mark("z", x @ w_x + h0 @ w_h)
    i = suite.mark("i", jax.nn.sigmoid(z[:, :H]))
    f = suite.mark("f", jax.nn.sigmoid(z[:, H:2 * H]))
    g = suite.mark("g", jnp.tanh(z[:, 2 * H:3 * H]))
    o = suite.mark("o", jax.nn.sigmoid(z[:, 3 * H:]))
    c = suite.mark("c", f * c0 + i * g)
    h = o * jnp.tanh(c)
    return jnp.concatenate([h, c], axis=1)


# %%
def backward(x, h0, c0, w_x, w_h, dout):
    H = h0.shape[1]
    z = x @ w_x + h0 @ w_h
    i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
    g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
    c = f * c0 + i * g
    dh, dc_out = dout[:, :H], dout[:, H:]
    do = suite.adjoint("o", blank("do"))
    dc = suite.adjoint("c", blank("dc"))
    di = suite.adjoint("i", blank("di"))
    df = suite.adjoint("f", blank("df"))
    dg = suite.adjoint("g", blank("dg"))
    delta = suite.adjoint("z", blank("delta"))
    dw_x = suite.adjoint("w_x", blank("dw_x"))
    dw_h = suite.adjoint("w_h", blank("dw_h"))
    return delta @ w_x.T, delta @ w_h.T, dc * f, dw_x, dw_h


# %% tags=["grade"]
grade("lstm", forward, backward, hint=1)
