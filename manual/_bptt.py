"""What every BPTT of manual/ shares: the weight of the recurrent adjoint, and checkpointing.

**The weight of the recurrent adjoint.** Step t (t = 0..T-1) reads the state that
entered it, s_{t-1} (s_{-1} is the initial state). The adjoint that step t sends back
into s_{t-1} is multiplied by a weight omega_t before it joins the adjoint s_{t-1}
already gets from outside:

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

**Checkpointed BPTT** (``segmented``). Full BPTT keeps, for every step, what its reverse
step needs (its residuals, r numbers per step): memory r·T. With a segment length k the
T steps are cut into ⌈T/k⌉ segments of k steps, the last one 1..k steps long (it ends
at T). Then

    forward sweep   run the recurrence through all but the last segment, keeping only
                    the state entering each segment (s numbers each): s·(⌈T/k⌉ - 1)
    reverse sweep   for each segment, last to first: recompute its forward from its
                    saved state, keeping its k·r residuals; run its reverse steps, which
                    hand the adjoint of its entering state to the segment before; add
                    its share of the weight gradients; free the residuals
    memory          s·(⌈T/k⌉ - 1) + r·k, that is O(T/k + k) states. It is smallest at
                    k = sqrt(T·s/r); ``checkpoint="sqrt"`` takes k = ⌈√T⌉, where both
                    terms are O(√T): about (s + r)·√T instead of r·T
    time            every step but those of the last segment runs forward twice: one
                    extra forward pass, at most (T - 1)/T of one, whatever k is

Truncation and xi need no special case: omega_t is a per-step weight, and each segment
takes its own steps' weights. The result is full BPTT's to rounding: the same steps run
on the same states (recomputed by the same step function); only the weight gradients
are summed segment by segment, in another order. k >= T is one segment: full BPTT, with
no recomputation and no saved state at all.

Source: T. Chen, B. Xu, C. Zhang and C. Guestrin, "Training Deep Nets with Sublinear
Memory Cost" (2016), O(√T) memory for one extra forward pass; A. Gruslys et al.,
"Memory-Efficient Backpropagation Through Time" (2016).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax, random

from manual._checks import require_float, require_rank
from manual.types import Array, ArrayLike

__all__ = ["adjoint_weights", "check_checkpoint", "check_param_names", "check_truncation",
           "check_xi", "cut_mask", "randomized_weights", "segment_length", "segmented"]


def check_param_names(params, names):
    """``params`` is a dict with exactly the keys ``names``."""
    if not hasattr(params, "keys") or set(params.keys()) != set(names):
        got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
        raise ValueError(f"params must be a dict with keys {names}, got {got}")


def _positive_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x > 0


def check_truncation(truncation):
    """``truncation`` is None or a positive Python int (it is static under jit)."""
    if truncation is None:
        return
    if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)):
        raise ValueError(f"truncation must be None or a positive int, got {truncation!r} "
                         f"of type {type(truncation).__name__}")
    if truncation <= 0:
        raise ValueError(f"truncation must be None or a positive int, got {truncation}")


def check_checkpoint(checkpoint):
    """``checkpoint`` is None, a positive Python int or "sqrt" (static under jit)."""
    if checkpoint is None or checkpoint == "sqrt" or _positive_int(checkpoint):
        return
    raise ValueError(f'checkpoint must be None, a positive int or "sqrt", got {checkpoint!r} '
                     f"of type {type(checkpoint).__name__}")


def segment_length(checkpoint, steps):
    """k, the steps per segment: T for None (one segment), ⌈√T⌉ for "sqrt", else min(k, T)."""
    check_checkpoint(checkpoint)
    if checkpoint is None:
        return steps
    if checkpoint == "sqrt":
        k = int(np.sqrt(steps))  # then exact in integers: the least k with k² >= T
        while k * k < steps:
            k += 1
        while k > 1 and (k - 1) * (k - 1) >= steps:
            k -= 1
        return k
    return min(int(checkpoint), steps)


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
    omega = jnp.ones((steps,), dtype) if xi is None else jnp.asarray(xi)
    if truncation is not None:
        omega = omega * jnp.asarray(cut_mask(steps, truncation), dtype)
    return omega


def randomized_weights(key: ArrayLike, steps: int, pi: float, *, dtype=jnp.float32) -> Array:
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
    if not _positive_int(steps):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(pi, (int, float, np.integer, np.floating)) and not 0.0 < pi <= 1.0:
        raise ValueError(f"pi must be in (0, 1], got {pi}")
    if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {jnp.dtype(dtype)}")
    pi = jnp.asarray(pi, dtype)
    keep = random.bernoulli(key, pi, (steps,))
    return jnp.where(keep, 1.0 / pi, 0.0).astype(dtype)


def _steps(a, start, length):
    """Steps start..start+length-1 of a (T, ...) array (None stays None); start may be traced."""
    if a is None:
        return None
    if isinstance(start, int):
        return a[start:start + length]
    return lax.dynamic_slice_in_dim(a, start, length, axis=0)


def segmented(advance, forward, reverse, state0, xs, dys, omega, k):
    """BPTT over segments of k steps, each recomputed in the reverse sweep (module docstring).

    The cell supplies three functions of one segment, which see only that segment's steps
    (each (k', ...) with k' <= k) and the state entering it (a tuple of arrays):

      advance(state, xs)                       -> the state leaving the segment
      forward(state, xs)                       -> residuals, what ``reverse`` needs
      reverse(state, xs, residuals, dys, omega, adjoint)
                                               -> (adjoint of the entering state,
                                                   dparams of the segment's steps, dxs)

    ``adjoint`` is the adjoint the segment after sends into the state leaving this one
    (zeros for the last), a tuple shaped like the state; ``omega`` is None or the
    segment's weights. k >= T runs ``forward`` and ``reverse`` once over all T steps.

    Returns:
      (dparams, dxs, adjoint of state0): the parameter gradients summed over all steps,
      dxs (T, ...) like xs, and the adjoint of the initial state.
    """
    steps = xs.shape[0]
    k = min(k, steps)
    tail = steps - k * ((steps - 1) // k)  # the last segment: 1..k steps, ending at T
    heads = (steps - tail) // k            # the full segments before it
    start = steps - tail

    # Forward sweep: only the state entering each head segment is kept.
    state = tuple(state0)
    if heads:
        def keep(state, j):
            return tuple(advance(state, _steps(xs, j * k, k))), state
        state, saved = lax.scan(keep, state, jnp.arange(heads))

    # The last segment has just been reached: its residuals now, then its reverse steps.
    xs_tail = _steps(xs, start, tail)
    residuals = forward(state, xs_tail)
    zeros = tuple(jnp.zeros_like(s) for s in state)
    adjoint, dparams, dxs_tail = reverse(state, xs_tail, residuals, _steps(dys, start, tail),
                                         _steps(omega, start, tail), zeros)
    if not heads:
        return dparams, dxs_tail, tuple(adjoint)

    # Reverse sweep over the heads: recompute a segment, run it backwards, free it. dxs is
    # written in place, one segment at a time, so no (T, ...) temporary is made for it.
    dxs = lax.dynamic_update_slice_in_dim(jnp.zeros(xs.shape[:1] + dxs_tail.shape[1:],
                                                    dxs_tail.dtype), dxs_tail, start, axis=0)

    def back(carry, inputs):
        adjoint, dparams, dxs = carry
        state, j = inputs
        xs_j = _steps(xs, j * k, k)
        residuals = forward(state, xs_j)
        adjoint, dp, dx = reverse(state, xs_j, residuals, _steps(dys, j * k, k),
                                  _steps(omega, j * k, k), adjoint)
        dparams = {name: dparams[name] + dp[name] for name in dparams}
        return (tuple(adjoint), dparams, lax.dynamic_update_slice_in_dim(dxs, dx, j * k, 0)), None

    (adjoint, dparams, dxs), _ = lax.scan(back, (tuple(adjoint), dparams, dxs),
                                          (saved, jnp.arange(heads)), reverse=True)
    return dparams, dxs, adjoint
