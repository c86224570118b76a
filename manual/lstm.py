"""An LSTM and its backprop through time, by hand.

Forward (time-major, row vectors, t = 0..T-1, h_{-1} = h0, c_{-1} = c0; the four gates
side by side along the 4H axis in the order i, f, g, o)::

    z_t          = x_t W_x + h_{t-1} W_h + b       W_x: (D, 4H)  W_h: (H, 4H)  b: (4H,)
    i, f, g, o   = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)   each (N, H)
    c_t          = f * c_{t-1} + i * g
    h_t          = o * tanh(c_t)

Backward, from t = T-1 down to 0, carrying the adjoints that step t+1 sends back into
h_t and c_t (gh_t, gc_t; both 0 at t = T-1). dh_t comes from outside (``dhs``); the
cell states get no cotangent from outside::

    dh   = dh_t + gh_t
    do   = dh * tanh(c_t)
    dc   = gc_t + dh * o * (1 - tanh(c_t)**2)          the cell's two paths meet here
    di, df, dg = dc * g, dc * c_{t-1}, dc * i
    delta_t = [di * i(1-i), df * f(1-f), dg * (1-g**2), do * o(1-o)]   (N, 4H), dE/dz_t
    gh_{t-1} = omega_t * delta_t W_hᵀ                  gh_{-1} is dh0
    gc_{t-1} = omega_t * dc * f                        gc_{-1} is dc0
    dx_t     = delta_t W_xᵀ

    dW_x = Σ_t x_tᵀ delta_t     dW_h = Σ_t h_{t-1}ᵀ delta_t     db = Σ_t Σ_n delta_t,n

Everything in delta_t but the adjoints dc and dh is known in the forward: the forward
scan of ``backward`` keeps factors_t = [g i(1-i), c_{t-1} f(1-f), i(1-g²), tanh(c_t)
o(1-o)], f and o(1 - tanh(c_t)²) (σ' = σ(1-σ) and tanh' = 1 - tanh² from the activated
values), so the reverse scan is delta_t = [dc, dc, dc, dh] * factors_t plus one matrix
product per step. omega_t = 1 is full BPTT; ``truncation=k`` sets omega_t = 0
where t is a positive multiple of k (both h and c entering those steps are cut); ``xi``
(randomized truncation) sets omega_t = xi_t on both. The weight gradients and the input
projection x_t W_x are single matrix products over all T·N rows, outside the scans (the
bias joins z_t inside the step, where it costs no pass of its own).

Memory traffic, not arithmetic, separates the two sides once the products are hoisted:
each (T, N, 4H) array is written in place over one that is dead by then. The forward
scan reads x_t W_x from slot t of its buffer and writes factors_t there; the reverse
scan reads factors_t and writes delta_t there. One (T, N, 4H) buffer serves all three,
and no scan output of that size is allocated and zero-filled.

``checkpoint=k`` (or "sqrt", k = ⌈√T⌉) keeps only (h, c) entering every k-th step and
recomputes each segment of k steps, residuals included, in the reverse sweep
(manual/_bptt.py derives the memory, O(T/k + k) states instead of O(T)); the products
above are then taken per segment. It combines with ``truncation`` and ``xi`` and equals
full BPTT to rounding.

Source: d2l.ai 9.7 "Backpropagation Through Time" and 10.1 "Long Short-Term Memory";
C. Tallec and Y. Ollivier, "Unbiasing Truncated Backpropagation Through Time" (2017);
T. Chen et al., "Training Deep Nets with Sublinear Memory Cost" (2016) for checkpointing.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import lstm
    >>> params = dict(w_x=jnp.ones((3, 8)) / 8, w_h=jnp.ones((2, 8)) / 8, b=jnp.zeros(8))
    >>> xs, h0, c0 = jnp.ones((5, 1, 3)), jnp.zeros((1, 2)), jnp.zeros((1, 2))
    >>> hs, cs = lstm.forward(params, xs, h0, c0)
    >>> dparams, dxs, dh0, dc0 = lstm.backward(params, xs, h0, c0, jnp.ones_like(hs))
    >>> dparams["w_h"].shape, dc0.shape
    ((2, 8), (1, 2))
    >>> saved = lstm.backward(params, xs, h0, c0, jnp.ones_like(hs), checkpoint="sqrt")
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

PARAM_NAMES = ("w_x", "w_h", "b")
_RANKS = {"w_x": 2, "w_h": 2, "b": 1, "xs": 3, "h0": 2, "c0": 2, "dhs": 3}


def _sigmoid(z):
    return 0.5 * jnp.tanh(0.5 * z) + 0.5  # = 1 / (1 + exp(-z)), without overflow


def _transposed(a):
    """aᵀ, materialized. XLA:CPU runs aᵀ @ b, a contraction over the rows of both, through
    its generic dot; from a transposed copy it is a standard product, which its fast GEMM
    path takes (5% faster in float32, 12% in float64 at the bench shape, copy included)."""
    return lax.optimization_barrier(a.T)


def _check(params, xs, h0, c0, dhs=None):
    arrays = dict(params, xs=xs, h0=h0, c0=c0)
    if dhs is not None:
        arrays["dhs"] = dhs
    require_floats(_RANKS, **arrays)
    (t, n, d), h = xs.shape, h0.shape[1]
    if t == 0:
        raise ValueError(f"xs must have at least one time step, got xs {xs.shape}")
    if params["w_x"].shape != (d, 4 * h):
        raise ValueError(f"params['w_x'] must have shape (D, 4H) = ({d}, {4 * h}) with D from "
                         f"xs {xs.shape} and H from h0 {h0.shape}, got {params['w_x'].shape}")
    if params["w_h"].shape != (h, 4 * h):
        raise ValueError(f"params['w_h'] must have shape (H, 4H) = ({h}, {4 * h}) with H from "
                         f"h0 {h0.shape}, got {params['w_h'].shape}")
    if params["b"].shape != (4 * h,):
        raise ValueError(f"params['b'] must have shape (4H,) = ({4 * h},) with H from "
                         f"h0 {h0.shape}, got {params['b'].shape}")
    if h0.shape[0] != n:
        raise ValueError(f"h0 must have shape (N, H) with N = xs.shape[1] = {n}, "
                         f"got xs {xs.shape} and h0 {h0.shape}")
    if c0.shape != h0.shape:
        raise ValueError(f"c0 must have the shape of h0, {h0.shape}, got {c0.shape}")
    if dhs is not None and dhs.shape != (t, n, h):
        raise ValueError(f"dhs must have the shape of hs, (T, N, H) = ({t}, {n}, {h}), "
                         f"got {dhs.shape}")


def _as_arrays(params, *arrays):
    _bptt.check_param_names(params, PARAM_NAMES)
    return ({k: jnp.asarray(v) for k, v in params.items()},
            *(None if a is None else jnp.asarray(a) for a in arrays))


def _gates(w_h, b, h_prev, c_prev, xw_t):
    """One forward step from its input projection: (i, f, g, o, c_t, tanh(c_t), h_t)."""
    h = h_prev.shape[1]
    z = xw_t + h_prev @ w_h + b[None, :]
    i, f, o = _sigmoid(z[:, :h]), _sigmoid(z[:, h:2 * h]), _sigmoid(z[:, 3 * h:])
    g = jnp.tanh(z[:, 2 * h:3 * h])
    c_t = f * c_prev + i * g
    tanh_c = jnp.tanh(c_t)
    return i, f, g, o, c_t, tanh_c, o * tanh_c


def _sweep(params, state, xs, *, emit):
    """The LSTM over xs (T', N, D) from state (h, c): ((h, c) leaving, what ``emit`` asks).

    emit=None: nothing; "states": (hs, cs); "residuals": (h_prevs, factors, fs,
    o_tanh_primes), the parts of the reverse step that do not depend on the carried
    adjoints, computed where the gates already are: with dc and dh the adjoints of c_t
    and h_t, delta_t = [dc, dc, dc, dh] * factors and dc = gc + dh * o_tanh_prime.
    factors is written in place over the input projection (module docstring).
    """
    t, n, d = xs.shape
    w_h, b = params["w_h"], params["b"]
    # the input projection does not depend on the recurrence: one (T'·N, D)(D, 4H) product
    xw = (xs.reshape(t * n, d) @ params["w_x"]).reshape(t, n, w_h.shape[1])

    if emit != "residuals":
        def step(state, xw_t):
            *_, c_t, _, h_t = _gates(w_h, b, *state, xw_t)
            return (h_t, c_t), (None if emit is None else (h_t, c_t))
        return lax.scan(step, tuple(state), xw)

    def step(carry, s):
        h_prev, c_prev, buf = carry
        i, f, g, o, c_t, tanh_c, h_t = _gates(w_h, b, h_prev, c_prev,
                                              lax.dynamic_index_in_dim(buf, s, keepdims=False))
        factors = jnp.concatenate([g * i * (1.0 - i),            # dE/dz_i = dc * this
                                   c_prev * f * (1.0 - f),       # dE/dz_f = dc * this
                                   i * (1.0 - g * g),            # dE/dz_g = dc * this
                                   tanh_c * o * (1.0 - o)],      # dE/dz_o = dh * this
                                  axis=1)
        buf = lax.dynamic_update_index_in_dim(buf, factors, s, 0)  # over x_s W_x, now dead
        return (h_t, c_t, buf), (h_prev, f, o * (1.0 - tanh_c * tanh_c))

    (h_last, c_last, factors), (h_prevs, fs, o_tanh_prime) = lax.scan(
        step, (*state, xw), jnp.arange(t))
    return (h_last, c_last), (h_prevs, factors, fs, o_tanh_prime)


def _reverse(params, state, xs, residuals, dhs, omega, adjoint):
    """The reverse steps of one segment (module docstring), from its residuals."""
    steps, n, d = xs.shape
    h = state[0].shape[1]
    h_prevs, factors, fs, o_tanh_prime = residuals
    w_h_t = params["w_h"].T

    def step(carry, inputs):  # carry: the adjoints step t+1 sent back into h_t, c_t
        gh_t, gc_t, buf = carry
        s, dh_t, f_t, o_tanh_prime_t, omega_t = inputs
        dh = dh_t + gh_t
        dc = gc_t + dh * o_tanh_prime_t                   # the cell's two paths meet here
        delta_t = (jnp.concatenate([dc, dc, dc, dh], axis=1)
                   * lax.dynamic_index_in_dim(buf, s, keepdims=False))
        buf = lax.dynamic_update_index_in_dim(buf, delta_t, s, 0)  # over factors_s, now dead
        gh_prev, gc_prev = delta_t @ w_h_t, dc * f_t
        if omega_t is not None:
            gh_prev, gc_prev = omega_t * gh_prev, omega_t * gc_prev
        return (gh_prev, gc_prev, buf), None

    (dh0, dc0, deltas), _ = lax.scan(step, (*adjoint, factors),
                                     (jnp.arange(steps), dhs, fs, o_tanh_prime, omega),
                                     reverse=True)

    # Shared weights: each gradient is one sum over all the segment's rows, after the scan.
    delta = deltas.reshape(steps * n, 4 * h)
    dparams = {"w_x": _transposed(xs.reshape(steps * n, d)) @ delta,
               "w_h": _transposed(h_prevs.reshape(steps * n, h)) @ delta,
               "b": delta.sum(axis=0)}
    dxs = (delta @ params["w_x"].T).reshape(steps, n, d)
    return (dh0, dc0), dparams, dxs


def forward(params: dict[str, ArrayLike], xs: ArrayLike, h0: ArrayLike,
            c0: ArrayLike) -> tuple[Array, Array]:
    """The LSTM over a sequence (equations in the module docstring).

    Args:
      params: {"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}, gates i, f, g, o along 4H.
      xs: inputs, time-major, (T, N, D), T >= 1.
      h0: initial hidden state, (N, H).
      c0: initial cell state, (N, H).

    Returns:
      (hs, cs): every hidden and cell state, each (T, N, H), in the dtype of the arguments.
    """
    params, xs, h0, c0 = _as_arrays(params, xs, h0, c0)
    _check(params, xs, h0, c0)
    return _sweep(params, (h0, c0), xs, emit="states")[1]


def backward(params: dict[str, ArrayLike], xs: ArrayLike, h0: ArrayLike, c0: ArrayLike,
             dhs: ArrayLike, *, truncation: int | None = None, xi: ArrayLike | None = None,
             checkpoint: int | str | None = None
             ) -> tuple[dict[str, Array], Array, Array, Array]:
    """Backprop through time for the LSTM: the gradients of <dhs, hs>.

    Args:
      params: {"w_x": (D, 4H), "w_h": (H, 4H), "b": (4H,)}.
      xs: inputs, (T, N, D).
      h0, c0: initial hidden and cell states, (N, H) each.
      dhs: cotangent of every hidden state, (T, N, H); cell states get none.
      truncation: None (full BPTT) or a positive int k: no gradient flows through the
        state (h and c) entering steps t = k, 2k, ... (static).
      xi: None, or (T,) weights of randomized truncation (``randomized_weights``):
        both adjoints that step t sends back into (h_{t-1}, c_{t-1}) ((h0, c0) for
        t = 0) are multiplied by xi_t. Composes with ``truncation``.
      checkpoint: None (keep every step's residuals), a positive int k or "sqrt"
        (k = ⌈√T⌉): keep only (h, c) entering every k-th step and recompute each segment
        of k steps in the reverse sweep, O(T/k + k) states of memory (static). Same
        result to rounding; combines with ``truncation`` and ``xi``.

    Returns:
      (dparams, dxs, dh0, dc0): dparams a dict with the keys and shapes of params,
      dxs (T, N, D), dh0 and dc0 (N, H); all in the dtype of the arguments.
    """
    params, xs, h0, c0, dhs, xi = _as_arrays(params, xs, h0, c0, dhs, xi)
    _check(params, xs, h0, c0, dhs)
    _bptt.check_truncation(truncation)
    steps = xs.shape[0]
    k = _bptt.segment_length(checkpoint, steps)
    _bptt.check_xi(xi, steps, xs.dtype)
    omega = _bptt.adjoint_weights(steps, truncation, xi, xs.dtype)

    def advance(state, xs):
        return _sweep(params, state, xs, emit=None)[0]

    def residuals(state, xs):
        return _sweep(params, state, xs, emit="residuals")[1]

    def reverse(*segment):
        return _reverse(params, *segment)

    dparams, dxs, (dh0, dc0) = _bptt.segmented(advance, residuals, reverse, (h0, c0), xs, dhs,
                                               omega, k)
    return dparams, dxs, dh0, dc0
