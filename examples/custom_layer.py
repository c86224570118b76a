"""A layer norm with a hand-written backward pass, checked by backprop-suite.

This is ordinary user code: jax.numpy and numpy, implicit broadcasting, no set-up. Check it
from the repository root with either of

    backprop-suite check examples/custom_layer.py
    python examples/custom_layer.py

The backward pass is the vector-Jacobian product of y = x̂·γ + β, x̂ = (x - μ)/σ,
σ = sqrt(var(x) + eps), over the last axis, for an output cotangent dy:

    g  = dy·γ
    dx = (g - mean(g) - x̂·mean(g·x̂)) / σ
    dγ = Σ_rows dy·x̂,   dβ = Σ_rows dy
"""

import sys

import jax.numpy as jnp
import numpy as np

from suite import check_vjp

EPS = 1e-5


def layer_norm(x, params):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    xhat = (x - mean) / jnp.sqrt(var + EPS)
    return xhat * params["gamma"] + params["beta"]


def layer_norm_backward(x, params, dy):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / jnp.sqrt(var + EPS)
    xhat = (x - mean) * rstd
    g = dy * params["gamma"]
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, {"gamma": (dy * xhat).sum(axis=0), "beta": dy.sum(axis=0)}


rng = np.random.default_rng(0)
x = 0.1 * rng.standard_normal((8, 32))  # rows of variance ~0.01: eps is not negligible
params = {"gamma": 1.0 + 0.1 * rng.standard_normal(32), "beta": 0.1 * rng.standard_normal(32)}
params32 = {name: p.astype(np.float32) for name, p in params.items()}

# float64 numpy inputs are checked in float64; float32 in float32 and against float64
results = [
    check_vjp(layer_norm, layer_norm_backward, x, params, name="layer_norm float64"),
    check_vjp(layer_norm, layer_norm_backward, x.astype(np.float32), params32,
              name="layer_norm float32"),
]

if __name__ == "__main__":
    for result in results:
        print(result, end="\n\n")
    sys.exit(0 if all(result.passed for result in results) else 1)  # 1: a check failed
