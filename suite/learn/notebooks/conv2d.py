# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   learn:
#     exercise: conv2d
# ---

# %% [markdown]
# # Convolution: dX and dW (Bouvrie)
#
# A 2-D cross-correlation, NCHW images and OIHW kernels, stride 1, no padding, written
# through the windows ("patches") of x:
#
#     P[n, c, a, b, i, j] = x[n, c, i + a, j + b]
#     y[n, o, i, j] = Σ_{c,a,b} P[n, c, a, b, i, j] w[o, c, a, b]
#
# Derive `dpatches` (dE/dP), `dw` (every term links one window and one output pixel),
# and `dx`: each pixel of x sits in many windows, so its gradient collects them all.
# `x: (2, 2, 5, 5)`, `w: (3, 2, 3, 3)`, `y: (2, 3, 3, 3)`.

# %%
import jax.numpy as jnp

import suite
from suite.learn import blank, grade


def patches(x, kh, kw):
    """P[n, c, a, b, i, j] = x[n, c, i + a, j + b], (N, C, kh, kw, Ho, Wo)."""
    ho, wo = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    return jnp.stack([jnp.stack([x[:, :, a:a + ho, b:b + wo] for b in range(kw)], axis=2)
                      for a in range(kh)], axis=2)


# %%
def forward(x, w):
    x, w = suite.mark("x", x), suite.mark("w", w)
    p = suite.mark("patches", patches(x, w.shape[2], w.shape[3]))
    return jnp.einsum("ncabij,ocab->noij", p, w)


# %%
def backward(x, w, dy):
    kh, kw = w.shape[2], w.shape[3]
    ho, wo = dy.shape[2], dy.shape[3]
    p = patches(x, kh, kw)
    dpatches = suite.adjoint("patches", blank("dpatches"))
    dw = suite.adjoint("w", blank("dw"))
    dx = suite.adjoint("x", blank("dx"))
    return dx, dw


# %% tags=["grade"]
grade("conv2d", forward, backward, hint=1)
