"""The hand-derived MLP backward as JAX's gradient: a ``jax.custom_vjp`` wrapper.

``mlp_loss(activation=..., loss=..., l2=...)`` returns ``E(params, x, y)``, the same
value as ``manual.mlp.loss``, whose ``jax.grad`` / ``jax.vjp`` does not differentiate
the forward but runs the costate recursion of ``manual.mlp.backprop`` on the stages the
forward kept. Any JAX optimiser loop can then train on hand-derived gradients.

This lives in suite/, not manual/: handing a backward pass to JAX is exactly the
autodiff machinery that manual/ must never touch.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from manual import mlp
    >>> E = mlp_loss(activation="tanh", loss="mse")
    >>> params = ((jnp.ones((2, 3)), jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> g = jax.grad(E)(params, x, y)   # runs manual.mlp.backprop
    >>> float(E(params, x, y)) > 0
    True
"""

import functools

import jax

from manual import losses as _losses
from manual import mlp
from manual.types import ArrayLike

__all__ = ["mlp_loss"]


def _scale(tree, g):
    return jax.tree_util.tree_map(lambda t: g * t, tree)


def mlp_loss(*, activation: mlp.ActivationArg, loss: _losses.LossLike,
             l2: ArrayLike = 0.0):
    """E(params, x, y) = manual.mlp.loss(...), with the manual backward as its VJP.

    Args:
      activation: a name in manual.activations.ACTIVATIONS, an Activation, or a list or
        tuple with one per hidden layer.
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss.
      l2: λ, the weight-decay coefficient (a Python float).

    Returns:
      A function (params, x, y) -> scalar. Its cotangents: params by the costate
      recursion, x as δ_1 W_1ᵀ, y (mse only) as -δ_L; integer labels, and the targets of
      any other loss, get none (a zero cotangent: only mse's ∂E/∂y is derived here).
      The same arguments give the same function (cached).
    """
    if isinstance(activation, list):  # the cache needs a hashable key
        activation = tuple(activation)
    return _mlp_loss(activation=activation, loss=loss, l2=l2)


@functools.lru_cache(maxsize=None)
def _mlp_loss(*, activation, loss, l2):
    _losses.get(loss)  # fail early on an unknown name
    config = dict(activation=activation, loss=loss, l2=l2)

    @jax.custom_vjp
    def value(params, x, y):
        return mlp.loss(params, x, y, **config)

    def value_fwd(params, x, y):
        a, z = mlp.stages(params, x, activation=activation)
        e = _losses.get(loss).value(z[-1], y) + mlp.l2_penalty(params, l2)
        return e, (params, a, z, y)  # keep the stages: the backward reuses them

    def value_bwd(residuals, g):
        params, a, z, y = residuals
        grads, dx = mlp.backprop(params, a, z, y, input_costate=True, **config)
        # mse is ½ mean ||z_L - y||², so ∂E/∂y = -(z_L - y)/N = -δ_L; labels are integers
        dy = -g * _losses.mse.grad(z[-1], y) if _losses.get(loss) is _losses.mse else None
        return _scale(grads, g), g * dx, dy

    value.defvjp(value_fwd, value_bwd)
    return value
