"""What full, truncated and randomized BPTT share: the per-step weight of the recurrent adjoint.

Step t (t = 0..T-1) reads the state that entered it, s_{t-1} (s_{-1} is the initial
state). The adjoint that step t sends back into s_{t-1} is multiplied by a weight
omega_t before it joins the adjoint s_{t-1} already gets from outside:

    full BPTT            omega_t = 1 for every t (no weight at all)
    truncation=k         omega_t = 0 where t is a positive multiple of k, 1 elsewhere
                         (JAX's gradient of a forward applying lax.stop_gradient to the state
                         entering those steps)
    randomized, xi       omega_t = xi_t, with xi_t = 0 (probability 1 - pi) or 1/pi
                         (probability pi), independent across steps, so E[xi_t] = 1
                         (JAX's gradient of a forward that feeds step t the state
                         sg(s) + xi_t * (s - sg(s)), whose value is s)

The two compose (omega_t = mask_t * xi_t). Source: d2l.ai 9.7 "Backpropagation Through
Time" (regular and randomized truncation); C. Tallec and Y. Ollivier, "Unbiasing
Truncated Backpropagation Through Time" (2017).
"""

import jax.numpy as jnp
import numpy as np
from jax import random

from manual._checks import require_float, require_rank


def check_param_names(params, names):
    """``params`` is a dict with exactly the keys ``names``."""
    if not hasattr(params, "keys") or set(params.keys()) != set(names):
        got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(f"params must be a dict with keys {names}, got {got}")


def check_truncation(truncation):
    """``truncation`` is None or a positive Python int (it is static under jit)."""
    if truncation is None:
        return
    if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)):
        raise ValueError(f"truncation must be None or a positive int, got {truncation!r} "
                         f"of type {type(truncation).__name__}")
    if truncation <= 0:
        raise ValueError(f"truncation must be None or a positive int, got {truncation}")


def check_xi(xi, steps, dtype):
    """``xi`` is None or a (T,) array in the dtype of the other arguments."""
    if xi is None:
        return
    require_float("xi", xi)
    require_rank("xi", xi, 1)
    if tuple(np.shape(xi)) != (steps,):
        raise ValueError(f"xi must have shape (T,) = ({steps},), one weight per step of xs, "
                         f"got {tuple(np.shape(xi))}")
    if jnp.result_type(xi) != dtype:
        raise ValueError(f"xi must have the dtype of xs, {dtype}, got {jnp.result_type(xi)}")


def cut_mask(steps, truncation):
    """(T,) numpy array: 0.0 where the state entering step t is cut (t = k, 2k, ...), else 1.0."""
    t = np.arange(steps)
    return np.where((t > 0) & (t % truncation == 0), 0.0, 1.0)


def adjoint_weights(steps, truncation, xi, dtype):
    """omega, the (T,) weights of the recurrent adjoint, or None for full BPTT (all ones)."""
    if truncation is None and xi is None:
        return None
    omega = jnp.ones((steps,), dtype) if xi is None else xi
    if truncation is not None:
        omega = omega * jnp.asarray(cut_mask(steps, truncation), dtype)
    return omega


def randomized_weights(key, steps, pi, *, dtype=jnp.float32):
    """Per-step weights for randomized truncation: xi_t = 1/pi w.p. pi, else 0.

    Each xi_t is 1/pi times a Bernoulli(pi) draw, independent across steps, so
    E[xi_t] = 1 and the weighted gradient is unbiased for the full BPTT gradient
    (the product of independent unit-mean weights along any path has unit mean).

    Args:
      key: a jax.random key.
      steps: T, the number of time steps (a positive int).
      pi: the probability of keeping a step's recurrent adjoint, 0 < pi <= 1
        (checked when it is a Python number; pi = 1 is full BPTT).
      dtype: the floating dtype of the weights (that of the sequence).

    Returns:
      xi: (T,) array of 0 and 1/pi, in ``dtype``; pass it as ``backward(..., xi=xi)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(pi, (int, float, np.integer, np.floating)) and not 0.0 < pi <= 1.0:
        raise ValueError(f"pi must be in (0, 1], got {pi}")
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
    pi = jnp.asarray(pi, dtype)
    keep = random.bernoulli(key, pi, (steps,))
    return jnp.where(keep, 1.0 / pi, 0.0).astype(dtype)
