# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: omega
# ---

# %% [markdown]
# # One layer of stagewise second-order backprop: the costate Ω_l
#
# An MLP, row vectors, batch first: `z_l = a_{l-1} W_l + b_l`, `a_l = tanh(z_l)` for
# hidden layers, `z_L` the logits, `E = 1/N Σₙ ℓ(z_Lₙ, yₙ)` with softmax cross-entropy.
# The first-order costate is `δ_l = ∂E/∂z_l`; the second-order one (Mizutani & Dreyfus) is
# `Ω_l = ∂²E/∂z_l∂z_l`, one `n_l × n_l` matrix per sample, so `(N, n_l, n_l)` for the batch.
#
# Derive three things:
#
# 1. `omega_L`: Ω_L, the Hessian of the loss in the logits (`p = softmax(z_L)`).
# 2. `omega_l`: one layer of the recursion, Ω_l from Ω_{l+1}. Differentiate
#    `δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)` in z_l: z_l moves δ_{l+1} through z_{l+1}, and
#    moves f'(z_l) itself. `w_next` is W_{l+1} `(n_l, n_{l+1})`, `delta_next` is δ_{l+1}
#    `(N, n_{l+1})`.
# 3. `h_l`: the layer's Hessian block over `Ŵ_l = [W_l; b_l]` (row-major: entry (i, k) at
#    `i n_l + k`), from `â_{l-1} = [a_{l-1}, 1]` and Ω_l.
#
# The grader runs your functions down a three-layer network and judges each Ω_l against
# `jax.hessian` of E in z_l, then the block of layer 2 against `suite.check_hessian`.

# %%
import jax
import jax.numpy as jnp

from suite.learn import blank, grade_omega


# %%
def omega_top(z_L, y):
    N = z_L.shape[0]
    p = jax.nn.softmax(z_L, axis=1)
    omega_L = blank("omega_L")
    return omega_L


# %%
def omega_step(z, w_next, delta_next, omega_next):
    df = 1 - jnp.tanh(z) ** 2            # f'(z) for tanh
    d2f = -2 * jnp.tanh(z) * df          # f''(z)
    back = delta_next @ w_next.T         # δ_{l+1} W_{l+1}ᵀ, (N, n_l)
    omega_l = blank("omega_l")
    return omega_l


# %%
def hessian_block(a_prev, omega):
    a_hat = jnp.concatenate([a_prev, jnp.ones((a_prev.shape[0], 1))], axis=1)
    h_l = blank("h_l")
    return h_l


# %% tags=["grade"]
grade_omega("omega", omega_top, omega_step, hessian_block, hint=1)
