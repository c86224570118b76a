"""A GRU and its backprop through time, by hand.

Forward, torch.nn.GRU's equations (time-major, row vectors, t = 0..T-1, h_{-1} = h0;
the three gates side by side along the 3H axis in the order r, z, n; W_x: (D, 3H),
W_h: (H, 3H), b_x, b_h: (3H,))::

    a_t = x_t W_x + b_x                  input projection      (N, 3H)
    u_t = h_{t-1} W_h + b_h              recurrent projection  (N, 3H)
    r   = σ(a_r + u_r)                   reset gate
    z   = σ(a_z + u_z)                   update gate
    n   = tanh(a_n + r ⊙ u_n)            candidate: r scales the recurrent term,
                                         bias b_hn included (torch's convention)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Backward, from t = T-1 down to 0, carrying one adjoint: g_t, what step t+1 sends back
into h_t (g_{T-1} = 0); dh_t comes from outside (``dhs``)::

    dh    = dh_t + g_t
    dn    = dh ⊙ (1 - z)                  dz = dh ⊙ (h_{t-1} - n)
    dα    = dn ⊙ (1 - n²)                 α = a_n + r ⊙ u_n, the candidate's argument
    dr    = dα ⊙ u_n
    delta_x = [dr ⊙ r(1-r), dz ⊙ z(1-z), dα]           dE/da_t   (N, 3H)
    delta_h = [dr ⊙ r(1-r), dz ⊙ z(1-z), dα ⊙ r]       dE/du_t   (N, 3H)
    g_{t-1} = omega_t (delta_h W_hᵀ + dh ⊙ z)          h_{t-1} feeds u_t and the
                                                       update's z ⊙ h_{t-1}; g_{-1} = dh0
    dx_t  = delta_x W_xᵀ

    dW_x = Σ_t x_tᵀ delta_x      db_x = Σ_t Σ_n delta_x
    dW_h = Σ_t h_{t-1}ᵀ delta_h  db_h = Σ_t Σ_n delta_h

The two deltas differ only in the candidate block: a_n enters α directly, u_n through
r. Everything in them but dh is known in the forward, so the forward scan of
``backward`` keeps factors_t = [(1-z)(1-n²) u_n r(1-r), (h_{t-1} - n) z(1-z),
(1-z)(1-n²)] (σ' = σ(1-σ), tanh' = 1 - tanh² from the activated values), r and z; the
reverse step is delta_x = [dh, dh, dh] ⊙ factors_t, delta_h = delta_x ⊙ [1, 1, r],
one matrix product and the carried adjoint. omega_t = 1 is full BPTT;
``truncation=k`` sets omega_t = 0 where t is a positive multiple of k (the state
entering those steps is cut); ``xi`` (randomized truncation) sets omega_t = xi_t. The
weight gradients and the input projection are single matrix products over all T·N
rows, outside the scans (as in manual.rnn and manual.lstm).

``checkpoint=k`` (or "sqrt", k = ⌈√T⌉) keeps only the state entering every k-th step and
recomputes each segment of k steps, residuals included, in the reverse sweep
(manual/_bptt.py derives the memory, O(T/k + k) states instead of O(T)); the products
above are then taken per segment. It combines with ``truncation`` and ``xi`` and equals
full BPTT to rounding.

Sources: K. Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for
Statistical Machine Translation" (2014), the gated recurrent unit; the torch.nn.GRU
documentation for the variant computed here (r applied to h W_hn + b_hn); d2l.ai 9.7
and C. Tallec and Y. Ollivier (2017) for truncated and randomized BPTT; T. Chen et al.,
"Training Deep Nets with Sublinear Memory Cost" (2016) for checkpointing.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import gru
    >>> params = dict(w_x=jnp.ones((3, 6)) / 8, w_h=jnp.ones((2, 6)) / 8,
    ...               b_x=jnp.zeros(6), b_h=jnp.zeros(6))
    >>> xs, h0 = jnp.ones((5, 1, 3)), jnp.zeros((1, 2))
    >>> hs = gru.forward(params, xs, h0)
    >>> dparams, dxs, dh0 = gru.backward(params, xs, h0, jnp.ones_like(hs), truncation=2)
    >>> hs.shape, dparams["w_h"].shape, dh0.shape
    ((5, 1, 2), (2, 6), (1, 2))
"""

import jax.numpy as jnp
from jax import lax

from manual import _bptt
from manual._checks import require_floats
from manual.types import Array, ArrayLike

__all__ = ["forward", "backward", "randomized_weights", "PARAM_NAMES"]

randomized_weights = _bptt.randomized_weights

PARAM_NAMES = ("w_x", "w_h", "b_x", "b_h")
_RANKS = {"w_x": 2, "w_h": 2, "b_x": 1, "b_h": 1, "xs": 3, "h0": 2, "dhs": 3}


def _sigmoid(z):
    return 0.5 * jnp.tanh(0.5 * z) + 0.5  # = 1 / (1 + exp(-z)), without overflow


def _check(params, xs, h0, dhs=None):
    _bptt.check_param_names(params, PARAM_NAMES)
    arrays = dict(params, xs=xs, h0=h0)
    if dhs is not None:
        arrays["dhs"] = dhs
    require_floats(_RANKS, **arrays)
    (t, n, d), h = xs.shape, h0.shape[1]
    if t == 0:
        raise ValueError(f"xs must have at least one time step, got xs {xs.shape}")
    expected = {"w_x": ((d, 3 * h), f"(D, 3H) = ({d}, {3 * h})"),
                "w_h": ((h, 3 * h), f"(H, 3H) = ({h}, {3 * h})"),
                "b_x": ((3 * h,), f"(3H,) = ({3 * h},)"),
                "b_h": ((3 * h,), f"(3H,) = ({3 * h},)")}
    for name, (shape, text) in expected.items():
        if params[name].shape != shape:
            raise ValueError(f"params[{name!r}] must have shape {text} with D from xs "
                             f"{xs.shape} and H from h0 {h0.shape}, got {params[name].shape}")
    if h0.shape[0] != n:
        raise ValueError(f"h0 must have shape (N, H) with N = xs.shape[1] = {n}, "
                         f"got xs {xs.shape} and h0 {h0.shape}")
    if dhs is not None and dhs.shape != (t, n, h):
        raise ValueError(f"dhs must have the shape of hs, (T, N, H) = ({t}, {n}, {h}), "
                         f"got {dhs.shape}")


def _input_projection(params, xs):
    """a_t = x_t W_x + b_x for every t: one (T·N, D)(D, 3H) product, before the scan."""
    t, n, d = xs.shape
    h3 = params["w_x"].shape[1]
    return (xs.reshape(t * n, d) @ params["w_x"]).reshape(t, n, h3) + params["b_x"][None, None, :]


def _forward_step(w_h, b_h, h_prev, a_t, *, residuals=False):
    """One step: (h_t, h_t), or with ``residuals`` (h_t, (h_t, factors_t, r, z)).

    The residuals are what the reverse step needs besides the adjoint (module
    docstring): with dh the adjoint of h_t, delta_x = [dh, dh, dh] ⊙ factors_t.
    """
    hid = h_prev.shape[1]
    u = h_prev @ w_h + b_h[None, :]
    r = _sigmoid(a_t[:, :hid] + u[:, :hid])
    z = _sigmoid(a_t[:, hid:2 * hid] + u[:, hid:2 * hid])
    u_n = u[:, 2 * hid:]
    n = jnp.tanh(a_t[:, 2 * hid:] + r * u_n)
    h_t = n + z * (h_prev - n)  # = (1 - z) n + z h_{t-1}
    if not residuals:
        return h_t, h_t
    d_alpha = (1.0 - z) * (1.0 - n * n)  # dE/dα = dh ⊙ this
    factors = jnp.concatenate([d_alpha * u_n * r * (1.0 - r),      # dE/da_r = dh ⊙ this
                               (h_prev - n) * z * (1.0 - z),       # dE/da_z = dh ⊙ this
                               d_alpha], axis=1)                   # dE/da_n = dh ⊙ this
    return h_t, (h_t, factors, r, z)


def _reverse_step(w_h_t, g_t, inputs):
    """One step of the reverse scan: (g_t, inputs_t) -> (g_{t-1}, (delta_x, delta_h)).

    ``inputs`` is (dh_t, factors_t, r_t, z_t, omega_t) with omega_t None for full BPTT;
    ``w_h_t`` is W_hᵀ. A segment of the sequence can be recomputed by ``_forward_step``
    and reversed by this function alone (the carried adjoint is the only state).
    """
    dh_t, factors_t, r_t, z_t, omega_t = inputs
    hid = dh_t.shape[1]
    dh = dh_t + g_t
    delta_x = jnp.concatenate([dh, dh, dh], axis=1) * factors_t
    delta_h = jnp.concatenate([delta_x[:, :2 * hid], delta_x[:, 2 * hid:] * r_t], axis=1)
    g_prev = delta_h @ w_h_t + dh * z_t
    return (g_prev if omega_t is None else omega_t * g_prev), (delta_x, delta_h)


def _scan_forward(params, xs, h0, *, residuals=False, keep=True):
    """(h leaving, what the scan emits): hs, the residuals (``residuals``), or nothing."""
    w_h, b_h = params["w_h"], params["b_h"]

    def step(h_prev, a_t):
        h_t, out = _forward_step(w_h, b_h, h_prev, a_t, residuals=residuals)
        return h_t, (out if keep else None)

    return lax.scan(step, h0, _input_projection(params, xs))


def _reverse(params, state, xs, residuals, dhs, omega, adjoint):
    """The reverse steps of one segment (module docstring), from its residuals."""
    (h0,), (g_last,) = state, adjoint
    steps, n, d = xs.shape
    h = h0.shape[1]
    hs, factors, rs, zs = residuals
    w_h_t = params["w_h"].T

    def step(g_t, inputs):
        return _reverse_step(w_h_t, g_t, inputs)

    dh0, (delta_x, delta_h) = lax.scan(step, g_last, (dhs, factors, rs, zs, omega),
                                       reverse=True)

    # Shared weights: each gradient is one sum over all the segment's rows, after the scan.
    delta_x = delta_x.reshape(steps * n, 3 * h)
    delta_h = delta_h.reshape(steps * n, 3 * h)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]).reshape(steps * n, h)
    dparams = {"w_x": xs.reshape(steps * n, d).T @ delta_x,
               "w_h": h_prev.T @ delta_h,
               "b_x": delta_x.sum(axis=0),
               "b_h": delta_h.sum(axis=0)}
    dxs = (delta_x @ params["w_x"].T).reshape(steps, n, d)
    return (dh0,), dparams, dxs


def forward(params: dict, xs: ArrayLike, h0: ArrayLike) -> Array:
    """The GRU over a sequence (torch.nn.GRU's equations, in the module docstring).

    Args:
      params: {"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}, gates r, z, n
        along 3H.
      xs: inputs, time-major, (T, N, D), T >= 1.
      h0: initial hidden state, (N, H).

    Returns:
      hs: every hidden state, (T, N, H), in the dtype of the arguments.
    """
    _check(params, xs, h0)
    return _scan_forward(params, xs, h0)[1]


def backward(params: dict, xs: ArrayLike, h0: ArrayLike, dhs: ArrayLike, *,
             truncation: int | None = None, xi: ArrayLike | None = None,
             checkpoint: int | str | None = None) -> tuple[dict, Array, Array]:
    """Backprop through time for the GRU: the gradients of <dhs, hs>.

    Args:
      params: {"w_x": (D, 3H), "w_h": (H, 3H), "b_x": (3H,), "b_h": (3H,)}.
      xs: inputs, (T, N, D).
      h0: initial hidden state, (N, H).
      dhs: cotangent of every hidden state, dE/dh_t, (T, N, H).
      truncation: None (full BPTT) or a positive int k: no gradient flows through the
        state entering steps t = k, 2k, ... (static).
      xi: None, or (T,) weights of randomized truncation (``randomized_weights``):
        the adjoint that step t sends back into h_{t-1} (h0 for t = 0), both through
        W_h and through z ⊙ h_{t-1}, is multiplied by xi_t. Composes with ``truncation``.
      checkpoint: None (keep every step's residuals), a positive int k or "sqrt"
        (k = ⌈√T⌉): keep only the state entering every k-th step and recompute each
        segment of k steps in the reverse sweep, O(T/k + k) states of memory (static).
        Same result to rounding; combines with ``truncation`` and ``xi``.

    Returns:
      (dparams, dxs, dh0): dparams a dict with the keys and shapes of params, dxs
      (T, N, D), dh0 (N, H); all in the dtype of the arguments.
    """
    _check(params, xs, h0, dhs)
    _bptt.check_truncation(truncation)
    steps = xs.shape[0]
    k = _bptt.segment_length(checkpoint, steps)
    _bptt.check_xi(xi, steps, xs.dtype)
    omega = _bptt.adjoint_weights(steps, truncation, xi, xs.dtype)

    def advance(state, xs):
        return (_scan_forward(params, xs, state[0], keep=False)[0],)

    def residuals(state, xs):
        return _scan_forward(params, xs, state[0], residuals=True)[1]

    def reverse(*segment):
        return _reverse(params, *segment)

    dparams, dxs, (dh0,) = _bptt.segmented(advance, residuals, reverse, (h0,), xs, dhs, omega, k)
    return dparams, dxs, dh0
