# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: embedding
# ---

# %% [markdown]
# # Embedding: a lookup and its scatter-add
#
# A table of V rows of width D read at integer ids, then a linear map:
#
#     emb = table[IDS]          (N, D)         y = emb w          (N, M)
#
# The ids are indices, not variables. Derive `demb`, `dw`, and `dtable`: row v of the
# table is read wherever `IDS == v`, and some ids repeat. `table: (5, 3)`, `w: (3, 2)`,
# `IDS` below (N = 7).

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade

IDS = jnp.array([1, 3, 1, 0, 3, 3, 2])


# %%
def forward(table, w):
    table, w = suite.mark("table", table), suite.mark("w", w)
    emb = suite.mark("emb", table[IDS])
    return emb @ w


# %%
def backward(table, w, dy):
    emb = table[IDS]
    demb = suite.adjoint("emb", blank("demb"))
    dw = suite.adjoint("w", blank("dw"))
    dtable = suite.adjoint("table", blank("dtable"))
    return dtable, dw


# %% tags=["grade"]
grade("embedding", forward, backward, hint=1)
