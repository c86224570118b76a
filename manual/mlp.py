"""An L-layer perceptron: forward stages, loss, and (below) its hand-derived gradient.

Stages, for l = 1..L (row vectors, batch first; a_0 = x)::

    z_l = a_{l-1} W_l + b_l          W_l: (n_{l-1}, n_l),  b_l: (n_l,)
    a_l = f(z_l)                     for l < L;  the last layer has no activation,
                                     z_L are the logits

    E(θ) = loss(z_L, y) + ½ λ Σ_l ||W_l||²      (L2 on the weights only)

Parameters are a tuple of (w, b) pairs, first layer first (contract, DESIGN.md).
"""

from manual import activations as _activations
from manual import losses as _losses
from manual._checks import require_float, require_rank


def check_params(params, x):
    """Validate an MLP's parameters against its input; returns the layer widths.

    Raises ValueError naming the offending argument and shapes: params not a non-empty
    sequence of (w, b) pairs, widths that do not chain, non-float or mixed dtypes.
    """
    require_float("x", x)
    require_rank("x", x, 2)
    if not isinstance(params, (tuple, list)) or not params:
        raise ValueError(f"params must be a non-empty tuple of (w, b) pairs, got {type(params).__name__}")
    widths = [x.shape[1]]
    for l, layer in enumerate(params, start=1):
        if not isinstance(layer, (tuple, list)) or len(layer) != 2:
            raise ValueError(f"params[{l - 1}] must be a (w, b) pair, got {type(layer).__name__}")
        w, b = layer
        require_float(f"params[{l - 1}] w", w)
        require_float(f"params[{l - 1}] b", b)
        require_rank(f"params[{l - 1}] w", w, 2)
        require_rank(f"params[{l - 1}] b", b, 1)
        if w.shape[0] != widths[-1]:
            raise ValueError(f"params[{l - 1}] w must have {widths[-1]} rows to chain with the "
                             f"previous width (x {x.shape}, widths so far {widths}), got {w.shape}")
        if b.shape != (w.shape[1],):
            raise ValueError(f"params[{l - 1}] b must have shape ({w.shape[1]},) to match w "
                             f"{w.shape}, got {b.shape}")
        if w.dtype != x.dtype or b.dtype != x.dtype:
            raise ValueError(f"params[{l - 1}] must have the dtype of x ({x.dtype}), got w "
                             f"{w.dtype} and b {b.dtype}")
        widths.append(w.shape[1])
    return widths


def stages(params, x, *, activation):
    """The forward pass, keeping every stage: (a, z) with a = [a_0..a_{L-1}], z = [z_1..z_L].

    a_{l-1} is the input of layer l and z_l its pre-activation; z_L are the logits.
    """
    check_params(params, x)
    f = _activations.get(activation).f
    a, z = [x], []
    for l, (w, b) in enumerate(params):
        z.append(a[-1] @ w + b[None, :])
        if l < len(params) - 1:
            a.append(f(z[-1]))
    return a, z


def forward(params, x, *, activation):
    """Logits z_L of the MLP (no activation after the last layer).

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      x: inputs, (N, n_0).
      activation: a name in manual.activations.ACTIVATIONS.

    Returns:
      logits, (N, n_L).
    """
    return stages(params, x, activation=activation)[1][-1]


def l2_penalty(params, l2):
    """½ λ Σ_l ||W_l||² (weights only, never biases)."""
    return 0.5 * l2 * sum((w * w).sum() for w, _ in params)


def loss(params, x, y, *, activation, loss, l2=0.0):
    """E(θ) = loss(forward(params, x), y) + ½ λ Σ_l ||W_l||².

    Args:
      params, x, activation: as for ``forward``.
      y: float targets (N, n_L) for "mse", integer labels (N,) for "softmax_cross_entropy".
      loss: a name in manual.losses.LOSSES.
      l2: λ, the weight-decay coefficient (weights only).

    Returns:
      A scalar in the dtype of x.
    """
    logits = forward(params, x, activation=activation)
    return _losses.get(loss).value(logits, y) + l2_penalty(params, l2)
