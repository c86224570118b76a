# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: activations_losses
# ---

# %% [markdown]
# # Activations and losses: tanh into softmax cross-entropy
#
# Logits from a tanh and a linear map, then the batch mean of the softmax cross-entropy
# against one-hot labels `y: (N, C)`:
#
#     a = tanh(z)      s = a @ v      p = softmax(s)      E = -1/N Σₙ Σ_c y log p
#
# `z: (N, H)`, `v: (H, C)`. Derive `ds = dE/ds` (the famous `p - y`, with its 1/N),
# then `da`, `dz` (tanh' in terms of its output a) and `dv`. `dE` is the scalar
# cotangent (1 when you differentiate E itself). The grader draws `N = 6`, `H = 4`,
# `C = 3`.

# %%
import jax
import jax.numpy as jnp

import suite
from suite.learn import blank, grade

Y = jax.nn.one_hot(jnp.array([0, 2, 1, 1, 0, 2]), 3)


# %%
def forward(z, v):
    z, v = suite.mark("z", z), suite.mark("v", v)
    a = suite.mark("a", jnp.tanh(z))
    s = suite.mark("s", a @ v)
    logp = jax.nn.log_softmax(s, axis=1)
    return -jnp.sum(Y * logp) / z.shape[0]


# %%
def backward(z, v, dE):
    N = z.shape[0]
    a = jnp.tanh(z)
    s = a @ v
    p = jax.nn.softmax(s, axis=1)
    ds = suite.adjoint("s", blank("ds"))
    dv = suite.adjoint("v", blank("dv"))
    da = suite.adjoint("a", blank("da"))
    dz = suite.adjoint("z", blank("dz"))
    return dz, dv


# %% tags=["grade"]
grade("activations_losses", forward, backward, hint=1)
