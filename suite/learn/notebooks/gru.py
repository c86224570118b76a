# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: gru
# ---

# %% [markdown]
# # GRU: one step (torch's equations)
#
# One GRU step, row vectors, the three gates side by side in the order r, z, n:
#
#     a = x W_x        u = h0 W_h                          (N, 3H) each
#     r = σ(a_r + u_r)        z = σ(a_z + u_z)
#     α = a_n + r ⊙ u_n       n = tanh(α)                 r scales the recurrent term
#     h = (1 - z) ⊙ n + z ⊙ h0
#
# Derive `dn`, `dz`, `dalpha`, `dr`, then the two pre-activation gradients: `delta_x =
# dE/da` and `delta_h = dE/du` differ only in the candidate block (a_n enters α
# directly, u_n through r), and the weights' gradients. `x: (3, 2)`, `h0: (3, 4)`,
# `W_x: (2, 12)`, `W_h: (4, 12)`.

# %%
import jax
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


# %%
def forward(x, h0, w_x, w_h):
    w_x, w_h = suite.mark("w_x", w_x), suite.mark("w_h", w_h)
    H = h0.shape[1]
    a = suite.mark("a", x @ w_x)
    u = suite.mark("u", h0 @ w_h)
    r = suite.mark("r", jax.nn.sigmoid(a[:, :H] + u[:, :H]))
    z = suite.mark("z", jax.nn.sigmoid(a[:, H:2 * H] + u[:, H:2 * H]))
    alpha = suite.mark("alpha", a[:, 2 * H:] + r * u[:, 2 * H:])
    n = suite.mark("n", jnp.tanh(alpha))
    return (1 - z) * n + z * h0


# %%
def backward(x, h0, w_x, w_h, dh):
    H = h0.shape[1]
    a, u = x @ w_x, h0 @ w_h
    r = jax.nn.sigmoid(a[:, :H] + u[:, :H])
    z = jax.nn.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
    n = jnp.tanh(a[:, 2 * H:] + r * u[:, 2 * H:])
    dn = suite.adjoint("n", blank("dn"))
    dz = suite.adjoint("z", blank("dz"))
    dalpha = suite.adjoint("alpha", blank("dalpha"))
    dr = suite.adjoint("r", blank("dr"))
    delta_x = suite.adjoint("a", blank("delta_x"))
    delta_h = suite.adjoint("u", blank("delta_h"))
    dw_x = suite.adjoint("w_x", blank("dw_x"))
    dw_h = suite.adjoint("w_h", blank("dw_h"))
    return delta_x @ w_x.T, delta_h @ w_h.T + dh * z, dw_x, dw_h


# %% tags=["grade"]
grade("gru", forward, backward, hint=1)
