"""The oracle for truncated and randomized BPTT: a forward that autodiff truncates itself.

A truncated gradient is not the gradient of any objective, but it is exactly what
``jax.grad`` / ``jax.vjp`` return for a forward that applies ``lax.stop_gradient`` to
the recurrent state at the cuts. ``unroll`` is that forward, generic over the step
function, so the same code serves the RNN and the LSTM (h, or the pair (h, c)):

    truncation=k   the state entering step t (t = k, 2k, ...) is stop_gradient(state)
    xi             the state entering step t is sg(s) + xi_t * (s - sg(s)): its value is
                   s, its cotangent is scaled by xi_t (randomized truncation)

Nothing here knows the hand derivation; it only rewires the forward so that autodiff
computes what the derivation claims.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["cuts", "unroll"]


def cuts(steps: int, truncation: int | None) -> np.ndarray:
    """Boolean (T,) numpy mask of the steps whose entering state is cut.

    Example::

        >>> cuts(7, 3).tolist()
        [False, False, False, True, False, False, True]
    """
    t = np.arange(steps)
    if truncation is None:
        return np.zeros(steps, bool)
    return (t > 0) & (t % truncation == 0)


def unroll(step: Callable, state0: Any, xs: Any, *, truncation: int | None = None,
           xi: jax.typing.ArrayLike | None = None) -> tuple[Any, Any]:
    """``lax.scan(step, state0, xs)`` with the state cut or reweighted for autodiff.

    Args:
      step: (state, x_t) -> (state, out_t), one step of the recurrence.
      state0: the initial state (any pytree).
      xs: per-step inputs, a pytree whose leaves have the leading axis T.
      truncation: None or a positive int k (see module docstring).
      xi: None or (T,) weights of randomized truncation.

    Returns:
      (final state, stacked outputs), as ``lax.scan``.
    """
    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    cut = jnp.asarray(cuts(steps, truncation))

    def body(state, inputs):
        x_t, cut_t, xi_t = inputs
        if truncation is not None:
            state = jax.tree_util.tree_map(
                lambda s: jnp.where(cut_t, lax.stop_gradient(s), s), state)
        if xi is not None:
            state = jax.tree_util.tree_map(
                lambda s: lax.stop_gradient(s) + xi_t * (s - lax.stop_gradient(s)), state)
        return step(state, x_t)

    return lax.scan(body, state0, (xs, cut, xi))
