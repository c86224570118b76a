"""Exercise: one GRU step (torch's equations), two pre-activation gradients."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/gru.py"


def inputs():
    """x (3, 2), h0 (3, 4), W_x (2, 12), W_h (4, 12), float64."""
    k = jax.random.split(jax.random.PRNGKey(10), 4)
    return (jax.random.normal(k[0], (3, 2), jnp.float64),
            0.5 * jax.random.normal(k[1], (3, 4), jnp.float64),
            jax.random.normal(k[2], (2, 12), jnp.float64) / 2,
            jax.random.normal(k[3], (4, 12), jnp.float64) / 2)


EXERCISE = register(Exercise(
    name="gru", family="gru", arguments=("x", "h0", "w_x", "w_h"),
    source="Cho et al. 2014; torch.nn.GRU's equations", inputs=inputs,
    steps=(
        Step("dn", "n", "dh * (1 - z)", M, ("dn    = dh ⊙ (1 - z)",),
             "d_alpha = (1.0 - z) * (1.0 - n * n)", "dE/dn, the candidate"),
        Step("dz", "z", "dh * (h0 - n)", M, ("dz = dh ⊙ (h_{t-1} - n)",),
             "(h_prev - n) * z * (1.0 - z),", "dE/dz, the update gate"),
        Step("dalpha", "alpha", "dn * (1 - n**2)", M, ("dα    = dn ⊙ (1 - n²)",),
             "d_alpha = (1.0 - z) * (1.0 - n * n)", "dE/dα"),
        Step("dr", "r", "dalpha * u[:, 2 * H:]", M, ("dr    = dα ⊙ u_n",),
             "factors = jnp.concatenate([d_alpha * u_n * r * (1.0 - r),", "dE/dr"),
        Step("delta_x", "a", "jnp.concatenate([dr * r * (1 - r), dz * z * (1 - z), dalpha], "
             "axis=1)", M, ("delta_x = [dr ⊙ r(1-r), dz ⊙ z(1-z), dα]",),
             "delta_x = jnp.concatenate([dh, dh, dh], axis=1) * factors_t", "dE/da"),
        Step("delta_h", "u", "jnp.concatenate([dr * r * (1 - r), dz * z * (1 - z), "
             "dalpha * r], axis=1)", M, ("delta_h = [dr ⊙ r(1-r), dz ⊙ z(1-z), dα ⊙ r]",),
             "delta_h = jnp.concatenate([delta_x[:, :2 * hid]", "dE/du"),
        Step("dw_x", "w_x", "x.T @ delta_x", M, ("dW_x = Σ_t x_tᵀ delta_x",),
             "delta_x = jnp.concatenate([dh, dh, dh], axis=1) * factors_t", "dE/dW_x"),
        Step("dw_h", "w_h", "h0.T @ delta_h", M, ("dW_h = Σ_t h_{t-1}ᵀ delta_h",),
             "g_prev = delta_h @ w_h_t + dh * z_t", "dE/dW_h"),
    ),
    # the recurrent candidate block without its reset gate: delta_h taken as delta_x
    planted=Planted("delta_h", "jnp.concatenate([dr * r * (1 - r), dz * z * (1 - z), dalpha], "
                    "axis=1)", None),
))
