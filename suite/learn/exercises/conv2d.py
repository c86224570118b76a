"""Exercise: conv2d's dX and dW through the windows of x (Bouvrie)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/conv.py"


def inputs():
    """x (2, 2, 5, 5), w (3, 2, 3, 3), float64."""
    kx, kw = jax.random.split(jax.random.PRNGKey(6))
    return (jax.random.normal(kx, (2, 2, 5, 5), jnp.float64),
            jax.random.normal(kw, (3, 2, 3, 3), jnp.float64))


EXERCISE = register(Exercise(
    name="conv2d", family="conv", arguments=("x", "w"),
    source="Bouvrie, Notes on Convolutional Neural Networks (2006)", inputs=inputs,
    steps=(
        Step("dpatches", "patches", 'jnp.einsum("noij,ocab->ncabij", dy, w)', M,
             ("dX[n,q,u,v] = Σ_{o,a,β} dY↑",),
             "dx = correlate(dy_kept, w, g.replace(padding=pad))", "dE/dP, per window"),
        Step("dw", "w", 'jnp.einsum("ncabij,noij->ocab", p, dy)', M,
             ("dW[o,c,a,β] = Σ_{n,i,j} dY[n,o,i,j]",),
             "dw = weight_gradient(dy4, x4, g)", "dE/dw"),
        Step("dx", "x", "sum(jnp.zeros_like(x).at[:, :, a:a + ho, b:b + wo].add("
             "dpatches[:, :, a, b]) for a in range(kh) for b in range(kw))", M,
             ("dX[n,q,u,v] = Σ_{o,a,β} dY↑",),
             "dx = correlate(dy_kept, w, g.replace(padding=pad))",
             "dE/dx, every window a pixel sits in"),
    ),
    # the kernel's two spatial axes swapped in the weight gradient
    planted=Planted("dw", 'jnp.einsum("ncabij,noij->ocba", p, dy)', None),
))
