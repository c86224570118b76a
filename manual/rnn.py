"""A vanilla (Elman) RNN and its backprop through time, by hand.

Forward (time-major, row vectors, t = 0..T-1, h_{-1} = h0)::

    z_t = x_t W_xh + h_{t-1} W_hh + b        x_t: (N, D)  W_xh: (D, H)  W_hh: (H, H)
    h_t = tanh(z_t)                          h_t: (N, H)  b: (H,)

The unfolded network is one big feed-forward network whose T layers share W_xh, W_hh
and b. Given dh_t = dE/dh_t from outside (``dhs``, every hidden state), backprop runs
from t = T-1 down to 0 with one carried quantity, the adjoint g_t that step t+1 sends
back into h_t (g_{T-1} = 0)::

    delta_t   = (dh_t + g_t) * (1 - h_t**2)          tanh' from the forward's output
    g_{t-1}   = omega_t * delta_t W_hhᵀ              g_{-1} is dh0
    dx_t      = delta_t W_xhᵀ

and because the weights are shared, their gradients sum over the steps::

    dW_xh = Σ_t x_tᵀ delta_t     dW_hh = Σ_t h_{t-1}ᵀ delta_t     db = Σ_t Σ_n delta_t,n

omega_t = 1 is full BPTT; ``truncation=k`` sets omega_t = 0 where t is a positive
multiple of k (the state entering those steps is cut, exactly JAX's gradient of a forward with
lax.stop_gradient there); ``xi`` (randomized truncation, see ``randomized_weights``)
sets omega_t = xi_t. The sums do not depend on the order of the steps, so they are
taken once, after the reverse scan, as single matrix products over all T·N rows
(autodiff accumulates them inside every reverse step); likewise the input projection
x_t W_xh of the forward is one matrix product before the forward scan.

``checkpoint=k`` (or "sqrt", k = ⌈√T⌉) keeps only the state entering every k-th step and
recomputes each segment of k steps in the reverse sweep (manual/_bptt.py derives the
memory, O(T/k + k) states instead of O(T)); the products above are then taken per
segment. It combines with ``truncation`` and ``xi`` and equals full BPTT to rounding.

Source: d2l.ai 9.7 "Backpropagation Through Time" (W_hh shared, its gradient summed
over steps; full, regular and randomized truncation); C. Tallec and Y. Ollivier,
"Unbiasing Truncated Backpropagation Through Time" (2017); T. Chen et al., "Training
Deep Nets with Sublinear Memory Cost" (2016) for checkpointing.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import rnn
    >>> params = dict(w_xh=jnp.ones((3, 4)) / 8, w_hh=jnp.eye(4) / 2, b=jnp.zeros(4))
    >>> xs, h0 = jnp.ones((5, 2, 3)), jnp.zeros((2, 4))
    >>> dparams, dxs, dh0 = rnn.backward(params, xs, h0, jnp.ones((5, 2, 4)), truncation=2)
    >>> dxs.shape, dparams["w_hh"].shape
    ((5, 2, 3), (4, 4))
    >>> saved = rnn.backward(params, xs, h0, jnp.ones((5, 2, 4)), truncation=2, checkpoint=2)
    >>> bool(jnp.allclose(saved[1], dxs, rtol=1e-6, atol=0))
    True
"""

import jax.numpy as jnp
from jax import lax

from manual import _bptt
from manual._checks import require_floats
from manual.types import Array, ArrayLike

__all__ = ["PARAM_NAMES", "backward", "forward", "randomized_weights"]

randomized_weights = _bptt.randomized_weights

PARAM_NAMES = ("w_xh", "w_hh", "b")
_RANKS = {"w_xh": 2, "w_hh": 2, "b": 1, "xs": 3, "h0": 2, "dhs": 3}


def _check(params, xs, h0, dhs=None):
    _bptt.check_param_names(params, PARAM_NAMES)
    arrays = dict(params, xs=xs, h0=h0)
    if dhs is not None:
        arrays["dhs"] = dhs
    require_floats(_RANKS, **arrays)
    (t, n, d), h = xs.shape, h0.shape[1]
    if t == 0:
        raise ValueError(f"xs must have at least one time step, got xs {xs.shape}")
    if params["w_xh"].shape != (d, h):
        raise ValueError(f"params['w_xh'] must have shape (D, H) = ({d}, {h}) with D from "
                         f"xs {xs.shape} and H from h0 {h0.shape}, got {params['w_xh'].shape}")
    if params["w_hh"].shape != (h, h):
        raise ValueError(f"params['w_hh'] must have shape (H, H) = ({h}, {h}) with H from "
                         f"h0 {h0.shape}, got {params['w_hh'].shape}")
    if params["b"].shape != (h,):
        raise ValueError(f"params['b'] must have shape (H,) = ({h},) with H from h0 {h0.shape}, "
                         f"got {params['b'].shape}")
    if h0.shape[0] != n:
        raise ValueError(f"h0 must have shape (N, H) with N = xs.shape[1] = {n}, "
                         f"got xs {xs.shape} and h0 {h0.shape}")
    if dhs is not None and dhs.shape != (t, n, h):
        raise ValueError(f"dhs must have the shape of hs, (T, N, H) = ({t}, {n}, {h}), "
                         f"got {dhs.shape}")


def _as_arrays(params, *arrays):
    _bptt.check_param_names(params, PARAM_NAMES)
    return ({k: jnp.asarray(v) for k, v in params.items()},
            *(None if a is None else jnp.asarray(a) for a in arrays))


def _sweep(params, state, xs, *, keep_states):
    """The recurrence over xs (T', N, D) from state (h,): (h leaving, hs or None)."""
    t, n, d = xs.shape
    h = params["w_hh"].shape[0]
    # the input projection does not depend on the recurrence: one (T'·N, D)(D, H) product
    xw = (xs.reshape(t * n, d) @ params["w_xh"]).reshape(t, n, h) + params["b"][None, None, :]
    w_hh = params["w_hh"]

    def step(h_prev, xw_t):
        h_t = jnp.tanh(xw_t + h_prev @ w_hh)
        return h_t, (h_t if keep_states else None)

    h_last, hs = lax.scan(step, state[0], xw)
    return (h_last,), hs


def _reverse(params, state, xs, hs, dhs, omega, adjoint):
    """The reverse steps of one segment (module docstring); hs are its states."""
    (h0,), (g_last,) = state, adjoint
    steps, n, d = xs.shape
    h = h0.shape[1]
    w_hh_t = params["w_hh"].T

    def step(g_t, inputs):  # g_t: the adjoint step t+1 sent back into h_t
        dh_t, h_t, omega_t = inputs
        delta_t = (dh_t + g_t) * (1.0 - h_t * h_t)
        g_prev = delta_t @ w_hh_t
        return (g_prev if omega_t is None else omega_t * g_prev), delta_t

    dh0, deltas = lax.scan(step, g_last, (dhs, hs, omega), reverse=True)

    # Shared weights: each gradient is one sum over all the segment's rows, after the scan.
    delta = deltas.reshape(steps * n, h)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]).reshape(steps * n, h)
    dparams = {"w_xh": xs.reshape(steps * n, d).T @ delta,
               "w_hh": h_prev.T @ delta,
               "b": delta.sum(axis=0)}
    dxs = (delta @ params["w_xh"].T).reshape(steps, n, d)
    return (dh0,), dparams, dxs


def forward(params: dict[str, ArrayLike], xs: ArrayLike, h0: ArrayLike) -> Array:
    """h_t = tanh(x_t W_xh + h_{t-1} W_hh + b) for t = 0..T-1, with h_{-1} = h0.

    Args:
      params: {"w_xh": (D, H), "w_hh": (H, H), "b": (H,)}.
      xs: inputs, time-major, (T, N, D), T >= 1.
      h0: initial hidden state, (N, H).

    Returns:
      hs: every hidden state, (T, N, H), in the dtype of the arguments.
    """
    params, xs, h0 = _as_arrays(params, xs, h0)
    _check(params, xs, h0)
    return _sweep(params, (h0,), xs, keep_states=True)[1]


def backward(params: dict[str, ArrayLike], xs: ArrayLike, h0: ArrayLike, dhs: ArrayLike, *,
             truncation: int | None = None, xi: ArrayLike | None = None,
             checkpoint: int | str | None = None) -> tuple[dict[str, Array], Array, Array]:
    """Backprop through time: the gradients of <dhs, hs> (see the module docstring).

    Args:
      params: {"w_xh": (D, H), "w_hh": (H, H), "b": (H,)}.
      xs: inputs, (T, N, D).
      h0: initial hidden state, (N, H).
      dhs: cotangent of every hidden state, dE/dh_t, (T, N, H).
      truncation: None (full BPTT) or a positive int k: no gradient flows through the
        state entering steps t = k, 2k, ... (static).
      xi: None, or (T,) weights of randomized truncation (``randomized_weights``):
        the adjoint that step t sends back into h_{t-1} (h0 for t = 0) is multiplied
        by xi_t. Composes with ``truncation``.
      checkpoint: None (keep every state), a positive int k or "sqrt" (k = ⌈√T⌉): keep
        only the state entering every k-th step and recompute each segment of k steps
        in the reverse sweep, O(T/k + k) states of memory (static). Same result to
        rounding; combines with ``truncation`` and ``xi``.

    Returns:
      (dparams, dxs, dh0): dparams a dict with the keys and shapes of params, dxs
      (T, N, D), dh0 (N, H); all in the dtype of the arguments.
    """
    params, xs, h0, dhs, xi = _as_arrays(params, xs, h0, dhs, xi)
    _check(params, xs, h0, dhs)
    _bptt.check_truncation(truncation)
    steps = xs.shape[0]
    k = _bptt.segment_length(checkpoint, steps)
    _bptt.check_xi(xi, steps, xs.dtype)
    omega = _bptt.adjoint_weights(steps, truncation, xi, xs.dtype)

    def advance(state, xs):
        return _sweep(params, state, xs, keep_states=False)[0]

    def states(state, xs):
        return _sweep(params, state, xs, keep_states=True)[1]

    def reverse(*segment):
        return _reverse(params, *segment)

    dparams, dxs, (dh0,) = _bptt.segmented(advance, states, reverse, (h0,), xs, dhs, omega, k)
    return dparams, dxs, dh0
