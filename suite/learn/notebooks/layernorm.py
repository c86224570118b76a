# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: layernorm
# ---

# %% [markdown]
# # Layer norm: the fused backward
#
# Each row of `x: (N, D)` normalised by its own statistics (the last axis):
#
#     mu = mean_j x      sigma = sqrt(mean_j (x - mu)² + eps)      xhat = (x - mu) / sigma
#     y = gamma · xhat + beta          gamma, beta: (D,), shared by the rows
#
# Derive `dbeta`, `dgamma`, `dxhat` and then `dx` in one expression: xhat_j depends on
# x_k directly, through mu and through sigma; apply the (symmetric) Jacobian
# ∂xhat/∂x to dxhat without forming it. The grader draws `N = 6`, `D = 5`.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade

EPS = 1e-5


# %%
def forward(x, gamma, beta):
    x, gamma, beta = suite.mark("x", x), suite.mark("gamma", gamma), suite.mark("beta", beta)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    sigma = jnp.sqrt(jnp.mean((x - mu) ** 2, axis=-1, keepdims=True) + EPS)
    xhat = suite.mark("xhat", (x - mu) / sigma)
    return gamma * xhat + beta


# %%
def backward(x, gamma, beta, dy):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    sigma = jnp.sqrt(jnp.mean((x - mu) ** 2, axis=-1, keepdims=True) + EPS)
    xhat = (x - mu) / sigma
    dbeta = suite.adjoint("beta", blank("dbeta"))
    dgamma = suite.adjoint("gamma", blank("dgamma"))
    dxhat = suite.adjoint("xhat", blank("dxhat"))
    dx = suite.adjoint("x", blank("dx"))
    return dx, dgamma, dbeta


# %% tags=["grade"]
grade("layernorm", forward, backward, hint=1)
