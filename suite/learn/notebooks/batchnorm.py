# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: batchnorm
# ---

# %% [markdown]
# # Batch norm, step by step (backprop ninja)
#
# Training-mode batch normalisation of `x: (N, D)`, statistics over the batch (axis 0):
#
#     mu = 1/N Σ x        xmu = x - mu        sq = xmu²          var = 1/N Σ sq
#     sigma = sqrt(var + eps)        inv = 1/sigma        xhat = xmu · inv
#     y = gamma · xhat + beta
#
# The forward marks every node with `suite.mark`. Derive the backward one node at a
# time, in reverse, as in Karpathy's "Becoming a Backprop Ninja" (makemore part 4):
# replace each `blank("...")` with the adjoint of that node, `dnode = dE/dnode`, given
# `dy = dE/dy`. Every step goes through `suite.adjoint`, which names it for the grader.
# Shapes: `x (N, D)`, `gamma, beta, mu, var, sigma, inv (D,)`, `xmu, sq, xhat (N, D)`.
# The grader draws `N = 32`, `D = 4`. The last cell grades the steps in place;
# `backprop-suite grade batchnorm.ipynb --hint 2` does the same from a shell.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade

EPS = 1e-5


# %%
def forward(x, gamma, beta):
    x, gamma, beta = suite.mark("x", x), suite.mark("gamma", gamma), suite.mark("beta", beta)
    N = x.shape[0]
    mu = suite.mark("mu", jnp.sum(x, axis=0) / N)
    xmu = suite.mark("xmu", x - mu)
    sq = suite.mark("sq", xmu**2)
    var = suite.mark("var", jnp.sum(sq, axis=0) / N)
    sigma = suite.mark("sigma", jnp.sqrt(var + EPS))
    inv = suite.mark("inv", 1.0 / sigma)
    xhat = suite.mark("xhat", xmu * inv)
    return gamma * xhat + beta


# %%
def backward(x, gamma, beta, dy):
    N = x.shape[0]
    mu = jnp.sum(x, axis=0) / N
    xmu = x - mu
    sq = xmu**2
    var = jnp.sum(sq, axis=0) / N
    sigma = jnp.sqrt(var + EPS)
    inv = 1.0 / sigma
    xhat = xmu * inv
    # y = gamma · xhat + beta
    dbeta = suite.adjoint("beta", blank("dbeta"))
    dgamma = suite.adjoint("gamma", blank("dgamma"))
    dxhat = suite.adjoint("xhat", blank("dxhat"))
    # xhat = xmu · inv
    dinv = suite.adjoint("inv", blank("dinv"))
    # inv = 1 / sigma;  sigma = sqrt(var + eps)
    dsigma = suite.adjoint("sigma", blank("dsigma"))
    dvar = suite.adjoint("var", blank("dvar"))
    # var = 1/N Σ sq  (the variance step)
    dsq = suite.adjoint("sq", blank("dsq"))
    # xmu feeds xhat and sq: both paths
    dxmu = suite.adjoint("xmu", blank("dxmu"))
    # xmu = x - mu;  mu = 1/N Σ x
    dmu = suite.adjoint("mu", blank("dmu"))
    dx = suite.adjoint("x", blank("dx"))
    return dx, dgamma, dbeta


# %% tags=["grade"]
grade("batchnorm", forward, backward, hint=1)
