# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: mlp
# ---

# %% [markdown]
# # The MLP's costate recursion (Hoey, Grosse; Kelley-Bryson)
#
# A two-layer perceptron, row vectors, batch first, squared loss:
#
#     z_1 = x W_1 + b_1      a_1 = tanh(z_1)      z_2 = a_1 W_2 + b_2
#     E = 1/(2N) Σₙ ||z_2 - y||²
#
# The costates are δ_l = ∂E/∂z_l. Derive δ_2 (`delta_L`), then the recursion
# δ_1 = f'(z_1) ⊙ (δ_2 W_2ᵀ) (`delta_l`), and each layer's parameter gradients from its
# costate. `x: (N, 3)`, `W_1: (3, 4)`, `W_2: (4, 2)`, `y: (N, 2)`, `N = 8`.

# %%
import jax
import jax.numpy as jnp

import suite
from suite.learn import blank, grade

Y = jax.random.normal(jax.random.PRNGKey(3), (8, 2))


# %%
def forward(x, w1, b1, w2, b2):
    w1, b1 = suite.mark("w1", w1), suite.mark("b1", b1)
    w2, b2 = suite.mark("w2", w2), suite.mark("b2", b2)
    z1 = suite.mark("z1", x @ w1 + b1)
    a1 = jnp.tanh(z1)
    z2 = suite.mark("z2", a1 @ w2 + b2)
    return 0.5 * jnp.sum((z2 - Y) ** 2) / x.shape[0]


# %%
def backward(x, w1, b1, w2, b2, dE):
    N = x.shape[0]
    z1 = x @ w1 + b1
    a1 = jnp.tanh(z1)
    z2 = a1 @ w2 + b2
    delta_L = suite.adjoint("z2", blank("delta_L"))
    dw2 = suite.adjoint("w2", blank("dw2"))
    db2 = suite.adjoint("b2", blank("db2"))
    delta_l = suite.adjoint("z1", blank("delta_l"))
    dw1 = suite.adjoint("w1", blank("dw1"))
    db1 = suite.adjoint("b1", blank("db1"))
    dx = delta_l @ w1.T
    return dx, dw1, db1, dw2, db2


# %% tags=["grade"]
grade("mlp", forward, backward, hint=1)
