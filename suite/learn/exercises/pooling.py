"""Exercise: max and average pooling over 2×2 windows (Bouvrie's subsampling layer)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/pool.py"


def inputs():
    """x (2, 3, 4, 6), float64 (distinct values: no ties in a window)."""
    return (jax.random.normal(jax.random.PRNGKey(7), (2, 3, 4, 6), jnp.float64),)


EXERCISE = register(Exercise(
    name="pooling", family="pool", arguments=("x",),
    source="Bouvrie, Notes on Convolutional Neural Networks (2006), subsampling layers",
    inputs=inputs,
    steps=(
        Step("dwin_max", "win_max", "argmax * dy[0][:, :, :, None, :, None]", M,
             ("max:  dX̃[n,c,u,v] = Σ_{i,j} dY[n,c,i,j] · [ (u,v) is the argmax",),
             "dx_pad = windows.unwindow(_routes(taps, dy4)", "dE/dwin through the max"),
        Step("dwin_avg", "win_avg", "jnp.ones_like(win) * dy[1][:, :, :, None, :, None] / 4", M,
             ("avg:  dX̃[n,c,u,v] = Σ_{i,j : (u,v) in window (i,j)} dY[n,c,i,j] / D[i,j]",),
             "dx_pad = windows.unwindow(taps, g.padded, g.window, g.stride, (1, 1))",
             "dE/dwin through the mean"),
        Step("dx", "x", "(dwin_max + dwin_avg).reshape(x.shape)", M,
             ("max:  dX̃[n,c,u,v] = Σ_{i,j} dY[n,c,i,j] · [ (u,v) is the argmax",),
             "dx_pad = windows.unwindow(_routes(taps, dy4)", "dE/dx"),
    ),
    # no switches: the max's gradient sent to every tap of the window
    planted=Planted("dwin_max", "jnp.ones_like(win) * dy[0][:, :, :, None, :, None]", None),
))
