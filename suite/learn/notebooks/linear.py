# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: linear
# ---

# %% [markdown]
# # The linear layer (Johnson)
#
# `y = x @ w + b` with `x: (N, D)`, `w: (D, M)`, `b: (M,)`, `y: (N, M)`, row vectors and
# batch first. Given `dy = dE/dy`, derive `dx`, `dw` and `db`. A derivative with respect
# to a matrix has that matrix's shape: let the shapes fix the order of each product.
# The grader draws `N = 5`, `D = 3`, `M = 4`. The last cell grades the steps in place.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


# %%
def forward(x, w, b):
    x, w, b = suite.mark("x", x), suite.mark("w", w), suite.mark("b", b)
    return x @ w + b


# %%
def backward(x, w, b, dy):
    dx = suite.adjoint("x", blank("dx"))
    dw = suite.adjoint("w", blank("dw"))
    db = suite.adjoint("b", blank("db"))
    return dx, dw, db


# %% tags=["grade"]
grade("linear", forward, backward, hint=1)
