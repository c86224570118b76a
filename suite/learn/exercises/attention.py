"""Exercise: scaled dot-product attention, one head, through the softmax."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/attention.py"


def inputs():
    """q, k, v (5, 4), float64."""
    k = jax.random.split(jax.random.PRNGKey(11), 3)
    return tuple(jax.random.normal(key, (5, 4), jnp.float64) for key in k)


EXERCISE = register(Exercise(
    name="attention", family="attention", arguments=("q", "k", "v"),
    source="Vaswani et al. 2017; the FlashAttention backward's row sums", inputs=inputs,
    steps=(
        Step("dv", "v", "p.T @ dout", M, ("dv  = Pᵀ dout",),
             'dv = jnp.einsum("...hgij,...hgid->...hjd", p, dout)', "dE/dv"),
        Step("dp", "p", "dout @ v.T", M, ("dP  = dout vᵀ",),
             'dp = jnp.einsum("...hgid,...hjd->...hgij", dout, v)', "dE/dP"),
        Step("ds", "s", "p * (dp - jnp.sum(dp * p, axis=1, keepdims=True))", M,
             ("dS  = P ⊙ (dP - rowsum(dP ⊙ P))",),
             "ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))",
             "dE/dS, through the softmax"),
        Step("dq", "q", "ds @ k / jnp.sqrt(d)", M, ("dq  = scale · dS k",),
             'dq = jnp.einsum("...hgij,...hjd->...hgid", ds, k)', "dE/dq"),
        Step("dk", "k", "ds.T @ q / jnp.sqrt(d)", M, ("dk  = scale · dSᵀ q",),
             'dk = jnp.einsum("...hgij,...hgid->...hjd", ds, q)', "dE/dk"),
    ),
    # the softmax taken as elementwise: the row sum of its Jacobian dropped
    planted=Planted("ds", "p * dp", None),
))
