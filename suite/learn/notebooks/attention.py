# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: attention
# ---

# %% [markdown]
# # Attention: scaled dot-product, one head
#
# Queries, keys and values `q, k, v: (T, d)`, rows i index queries, columns j keys:
#
#     S = q kᵀ / sqrt(d)        P = softmax(S) along j        out = P v
#
# Derive `dv`, `dp`, then `ds` through the softmax (its Jacobian diag(p) - p pᵀ per row,
# applied without forming it), then `dq` and `dk`. `T = 5`, `d = 4`.

# %%
import jax
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


# %%
def forward(q, k, v):
    q, k, v = suite.mark("q", q), suite.mark("k", k), suite.mark("v", v)
    s = suite.mark("s", q @ k.T / jnp.sqrt(q.shape[1]))
    p = suite.mark("p", jax.nn.softmax(s, axis=1))
    return p @ v


# %%
def backward(q, k, v, dout):
    d = q.shape[1]
    p = jax.nn.softmax(q @ k.T / jnp.sqrt(d), axis=1)
    dv = suite.adjoint("v", blank("dv"))
    dp = suite.adjoint("p", blank("dp"))
    ds = suite.adjoint("s", blank("ds"))
    dq = suite.adjoint("q", blank("dq"))
    dk = suite.adjoint("k", blank("dk"))
    return dq, dk, dv


# %% tags=["grade"]
grade("attention", forward, backward, hint=1)
