# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: pooling
# ---

# %% [markdown]
# # Pooling: max and average over 2×2 windows
#
# `x: (N, C, H, W)` cut into non-overlapping 2×2 windows,
# `win[n, c, i, a, j, b] = x[n, c, 2i + a, 2j + b]`; the output stacks both poolings:
#
#     y[0] = max over (a, b) of win        y[1] = mean over (a, b) of win
#
# Derive `dwin_max` (the max routes its gradient to its argmax only: Bouvrie's
# "switches"), `dwin_avg` (the mean spreads it evenly) and `dx`. `x: (2, 3, 4, 6)`,
# `y: (2, 2, 3, 2, 3)`.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


def windows(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2)


# %%
def forward(x):
    x = suite.mark("x", x)
    win_max = suite.mark("win_max", windows(x))
    win_avg = suite.mark("win_avg", windows(x))
    return jnp.stack([jnp.max(win_max, axis=(3, 5)), jnp.mean(win_avg, axis=(3, 5))])


# %%
def backward(x, dy):
    win = windows(x)
    ymax = jnp.max(win, axis=(3, 5))
    argmax = win == ymax[:, :, :, None, :, None]       # the switches, (N, C, H/2, 2, W/2, 2)
    dwin_max = suite.adjoint("win_max", blank("dwin_max"))
    dwin_avg = suite.adjoint("win_avg", blank("dwin_avg"))
    dx = suite.adjoint("x", blank("dx"))
    return (dx,)


# %% tags=["grade"]
grade("pooling", forward, backward, hint=1)
