# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: rnn
# ---

# %% [markdown]
# # RNN: backprop through time (d2l 9.7)
#
# An Elman RNN, time-major, a short sequence unrolled in Python (`T = 3`), `h_{-1} = h0`:
#
#     z_t = x_t W_xh + h_{t-1} W_hh        h_t = tanh(z_t)        out = [h_0, ..., h_{T-1}]
#
# Every h_t gets a gradient from outside (`dhs[t]`) and one from step t+1 (through W_hh).
# Derive, from t = T-1 down to 0, `dh_t` (both paths) and `delta_t = dE/dz_t`, then the
# shared weights' gradients, which sum over the steps. `xs: (3, 2, 3)`, `h0: (2, 4)`,
# `W_xh: (3, 4)`, `W_hh: (4, 4)`.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


# %%
def forward(xs, h0, w_xh, w_hh):
    w_xh, w_hh = suite.mark("w_xh", w_xh), suite.mark("w_hh", w_hh)
    h, hs = h0, []
    for t in range(xs.shape[0]):
        z = suite.mark(f"z{t}", xs[t] @ w_xh + h @ w_hh)
        h = suite.mark(f"h{t}", jnp.tanh(z))
        hs.append(h)
    return jnp.stack(hs)


# %%
def backward(xs, h0, w_xh, w_hh, dhs):
    T = xs.shape[0]
    h, hs = h0, []
    for t in range(T):
        h = jnp.tanh(xs[t] @ w_xh + h @ w_hh)
        hs.append(h)
    h_prev = [h0] + hs[:-1]
    deltas = [None] * T
    for t in reversed(range(T)):
        dh_t = suite.adjoint(f"h{t}", blank("dh_t"))
        delta_t = suite.adjoint(f"z{t}", blank("delta_t"))
        deltas[t] = delta_t
    dw_xh = suite.adjoint("w_xh", blank("dw_xh"))
    dw_hh = suite.adjoint("w_hh", blank("dw_hh"))
    dxs = jnp.stack([deltas[t] @ w_xh.T for t in range(T)])
    dh0 = deltas[0] @ w_hh.T
    return dxs, dh0, dw_xh, dw_hh


# %% tags=["grade"]
grade("rnn", forward, backward, hint=1)
