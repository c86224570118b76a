"""Exercise: one layer of the stagewise second-order costate Ω (Mizutani & Dreyfus)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register
from suite.learn.second_order import grade_omega

__all__ = ["EXERCISE"]

M = "manual/stagewise.py"


def inputs():
    """x (5, 3), one-hot y (5, 2), and W, b of a 3-4-4-2 tanh network, float64."""
    keys = jax.random.split(jax.random.PRNGKey(19), 8)
    widths = (3, 4, 4, 2)
    x = jax.random.normal(keys[0], (5, 3), jnp.float64)
    y = jax.nn.one_hot(jax.random.randint(keys[1], (5,), 0, 2), 2, dtype=jnp.float64)
    params = []
    for l in range(3):
        params.append(jax.random.normal(keys[2 + 2 * l], widths[l:l + 2], jnp.float64)
                      / jnp.sqrt(widths[l]))
        params.append(0.1 * jax.random.normal(keys[3 + 2 * l], (widths[l + 1],), jnp.float64))
    return (x, y, *params)


EXERCISE = register(Exercise(
    name="omega", family="stagewise", arguments=("x", "y", "W1", "b1", "W2", "b2", "W3", "b3"),
    source="Mizutani & Dreyfus 2006/2008, stagewise second-order backprop",
    inputs=inputs, functions=("omega_top", "omega_step", "hessian_block"), grader=grade_omega,
    steps=(
        Step("omega_L", "omega_L",
             "(jnp.einsum('nk,kq->nkq', p, jnp.eye(p.shape[1])) "
             "- jnp.einsum('nk,nq->nkq', p, p)) / N",
             M, ("Ω_L = ℓ''(z_L) / N",), "omega_top = fn.hessian(z[-1], y) / x.shape[0]",
             "∂²E/∂z_L², the loss's own curvature"),
        Step("omega_l", "omega_l",
             "df[:, :, None] * jnp.einsum('kr,nrs,qs->nkq', w_next, omega_next, w_next) "
             "* df[:, None, :] + jnp.einsum('nk,kq->nkq', d2f * back, jnp.eye(z.shape[1]))",
             M, ("Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag",),
             'omega[l] = df[l][:, :, None] * jnp.einsum("nks,qs->nkq"',
             "∂²E/∂z_l², one layer of the recursion"),
        Step("h_l", "h_l",
             "jnp.einsum('ni,nj,nkq->ikjq', a_hat, a_hat, omega)"
             ".reshape(a_hat.shape[1] * omega.shape[1], -1)",
             M, ("H_ll[(i,k), (j,q)] = Σₙ â_{l-1}[i] â_{l-1}[j] Ω_l[k, q]",),
             "out = (left @ pair.y_lm.reshape(n, k * q))", "∂²E/∂Ŵ_l², the layer's block"),
    ),
    # the classic slip: the Gauss-Newton part alone, f''(z_l) forgotten
    planted=Planted("omega_l", "df[:, :, None] * jnp.einsum('kr,nrs,qs->nkq', w_next, "
                    "omega_next, w_next) * df[:, None, :]", "Gauss-Newton"),
))
