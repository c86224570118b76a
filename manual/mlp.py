"""An L-layer perceptron: forward stages, loss, and its hand-derived gradient.

Stages, for l = 1..L (row vectors, batch first; a_0 = x)::

    z_l = a_{l-1} W_l + b_l          W_l: (n_{l-1}, n_l),  b_l: (n_l,)
    a_l = f(z_l)                     for l < L;  the last layer has no activation,
                                     z_L are the logits

    E(θ) = loss(z_L, y) + ½ λ Σ_l ||W_l||²      (L2 on the weights only)

Parameters are a tuple of (w, b) pairs, first layer first (contract, docs/design.md §2).

``activation=`` is a name, a ``manual.activations.Activation``, or a sequence with one
of those per hidden layer (first hidden layer first); ``loss=`` is a name or a
``manual.losses.Loss``. Both are static: they choose the code, not its inputs.

Backward: the costate recursion (``grad``, ``backprop``). With δ_l = ∂E/∂z_l (N, n_l)::

    δ_L     = ∂loss/∂z_L                       the loss gradient in the logits
    δ_l     = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)     l = L-1, ..., 1
    ∂E/∂W_l = a_{l-1}ᵀ δ_l + λ W_l
    ∂E/∂b_l = Σₙ δ_l,n                         (the bias is broadcast over the batch)

Sources: Hoey, "Derivation of Backpropagation Equations"; Grosse, Lecture 6;
"A Derivation of Backpropagation in Matrix Form"; Mizutani, Dreyfus & Nishio, "On
derivation of MLP backpropagation from the Kelley-Bryson optimal-control gradient
formula and its application" (IJCNN 2000).
"""

import jax.numpy as jnp
import numpy as np

from manual import activations as _activations
from manual import losses as _losses
from manual._checks import require_float, require_rank
from manual.types import Array, ArrayLike

__all__ = ["backprop", "check_l2", "check_params", "check_structure", "forward", "grad",
           "l2_penalty", "loss", "stages"]

# A name or Activation for every hidden layer, or a tuple/list with one per hidden layer.
ActivationArg = _activations.ActivationLike | tuple | list
# A tuple (or list) of (w, b) pairs, first layer first.
Params = tuple | list


def check_structure(params: Params) -> None:
    """params must be a non-empty tuple (or list) of (w, b) pairs of arrays.

    Checked before anything reads the layout (``params[l][0].shape``), so a wrong
    container is a ValueError naming params, not a KeyError or an unpacking error.
    """
    if not isinstance(params, (tuple, list)) or not params:
        raise ValueError(f"params must be a non-empty tuple of (w, b) pairs, got "
                         f"{type(params).__name__}")
    if len(params) == 2 and all(hasattr(p, "ndim") for p in params):
        raise ValueError(f"params must be a tuple of (w, b) pairs, got a single pair of arrays "
                         f"of shapes {np.shape(params[0])} and {np.shape(params[1])}; one layer "
                         f"is ((w, b),)")
    for l, layer in enumerate(params):
        if not isinstance(layer, (tuple, list)) or len(layer) != 2:
            got = (f"a dict with keys {sorted(layer)}" if isinstance(layer, dict)
                   else type(layer).__name__)
            raise ValueError(f"params[{l}] must be a (w, b) pair, got {got}")
        if not all(hasattr(p, "ndim") for p in layer):
            raise ValueError(f"params[{l}] must be a (w, b) pair of arrays, got "
                             f"({type(layer[0]).__name__}, {type(layer[1]).__name__})")


def check_l2(l2: ArrayLike) -> None:
    """l2 (λ of ½ λ Σ ||W||²) must be a scalar >= 0 (a traced λ is taken as it is)."""
    if np.ndim(l2) != 0:
        raise ValueError(f"l2 must be a scalar, got shape {np.shape(l2)}")
    number = isinstance(l2, (int, float, np.number)) and not isinstance(l2, (bool, np.bool_))
    if isinstance(l2, (bool, np.bool_)) or (not number and not hasattr(l2, "dtype")):
        raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
    if number and not l2 >= 0:
        raise ValueError(f"l2 must be >= 0 (a weight-decay coefficient), got {l2!r}")


def check_params(params: Params, x: ArrayLike) -> list:
    """Validate an MLP's parameters against its input; returns the layer widths.

    Raises ValueError naming the offending argument and shapes: params not a non-empty
    sequence of (w, b) pairs, widths that do not chain, non-float or mixed dtypes.
    """
    check_structure(params)
    require_float("x", x)
    require_rank("x", x, 2)
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


def stages(params: Params, x: ArrayLike, *, activation: ActivationArg) -> tuple:
    """The forward pass, keeping every stage: (a, z) with a = [a_0..a_{L-1}], z = [z_1..z_L].

    a_{l-1} is the input of layer l and z_l its pre-activation; z_L are the logits.
    Hidden layer l applies the l-th activation (``manual.activations.per_layer``).
    """
    check_params(params, x)
    acts = _activations.per_layer(activation, len(params) - 1)
    a, z = [x], []
    for l, (w, b) in enumerate(params):
        z.append(a[-1] @ w + b[None, :])
        if l < len(params) - 1:
            a.append(acts[l].f(z[-1]))
    return a, z


def forward(params: Params, x: ArrayLike, *, activation: ActivationArg) -> Array:
    """Logits z_L of the MLP (no activation after the last layer).

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      x: inputs, (N, n_0).
      activation: a name in manual.activations.ACTIVATIONS, an Activation, or one per
        hidden layer.

    Returns:
      logits, (N, n_L).
    """
    return stages(params, x, activation=activation)[1][-1]


def l2_penalty(params: Params, l2: ArrayLike) -> Array:
    """½ λ Σ_l ||W_l||² (weights only, never biases)."""
    return 0.5 * l2 * sum((w * w).sum() for w, _ in params)


def loss(params: Params, x: ArrayLike, y: ArrayLike, *, activation: ActivationArg,
         loss: _losses.LossLike, l2: ArrayLike = 0.0) -> Array:
    """E(θ) = loss(forward(params, x), y) + ½ λ Σ_l ||W_l||².

    Args:
      params, x, activation: as for ``forward``.
      y: float targets (N, n_L) for "mse", integer labels (N,) for "softmax_cross_entropy".
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss.
      l2: λ, the weight-decay coefficient (weights only).

    Returns:
      A scalar in the dtype of x.
    """
    check_l2(l2)
    logits = forward(params, x, activation=activation)
    return _losses.get(loss).value(logits, y) + l2_penalty(params, l2)


def _weight_decay(dw, w, l2):
    """∂/∂W of ½ λ ||W||² added to dw; skipped when λ is a literal zero."""
    if isinstance(l2, (int, float)) and l2 == 0:
        return dw
    return dw + jnp.asarray(l2, w.dtype) * w  # λ in w's dtype: float32 stays float32


def backprop(params: Params, a: list, z: list, y: ArrayLike, *,
             activation: ActivationArg, loss: _losses.LossLike, l2: ArrayLike = 0.0,
             input_costate: bool = False) -> tuple:
    """The costate recursion over stored forward stages (``a, z = stages(params, x)``).

    Read as a discrete-time optimal-control problem (Mizutani, Dreyfus & Nishio, after
    Kelley and Bryson): layer l is stage l, its parameters θ_l = (W_l, b_l) are the
    stage's decision, the pre-activations z_l are the state, and the stages are::

        z_1 = x W_1 + b_1,   z_{l+1} = F_{l+1}(z_l, θ_{l+1}) = f(z_l) W_{l+1} + b_{l+1}
        E = Φ(z_L) + Σ_l g_l(θ_l),   Φ = loss(·, y) (terminal),   g_l = ½ λ ||W_l||²

    The Kelley-Bryson gradient formula propagates the costate of each stage's state,
    the ordered derivative δ_l = ∂⁺E/∂z_l (through every later stage), backward from
    the terminal condition, and reads each decision's gradient off the costate of the
    state it drives::

        δ_L = ∂Φ/∂z_L                                              terminal condition
        δ_l = (∂F_{l+1}/∂z_l)ᵀ δ_{l+1} = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)    costate equation
        ∂E/∂θ_l = ∂g_l/∂θ_l + (∂z_l/∂θ_l)ᵀ δ_l:                       gradient formula
            ∂E/∂W_l = a_{l-1}ᵀ δ_l + λ W_l,   ∂E/∂b_l = Σₙ δ_l,n

    So backprop's deltas are exactly the costates, and the backward pass is one sweep
    over the stages, as the forward is. (With the activations a_l as the state, as in
    the paper, the costate is ∂E/∂a_l = δ_{l+1} W_{l+1}ᵀ and δ_l = f'(z_l) ⊙ ∂E/∂a_l:
    the same recursion cut at the other point of each stage.) f'(z_l) comes from the
    kept a_l where it can (``Activation.df_from``).

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      a: [a_0 .. a_{L-1}], the inputs of the layers (a_0 = x), as ``stages`` returns.
      z: [z_1 .. z_L], the pre-activations (z_L the logits), as ``stages`` returns.
      y: targets (N, n_L) for "mse", integer labels (N,) for "softmax_cross_entropy".
      activation: a name in manual.activations.ACTIVATIONS, an Activation, or one per
        hidden layer.
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss.
      l2: λ, the weight-decay coefficient (weights only).
      input_costate: also return ∂E/∂x = δ_1 W_1ᵀ (skipped by default: a training
        step does not need it, and it costs as many flops as ∂E/∂W_1).

    Returns:
      grads, a tuple of (dw, db) pairs shaped like params; with ``input_costate``,
      (grads, dx) with dx: (N, n_0).
    """
    check_params(params, a[0])
    check_l2(l2)
    if len(a) != len(params) or len(z) != len(params):
        raise ValueError(f"a and z must hold one entry per layer ({len(params)}), as stages "
                         f"returns them, got {len(a)} and {len(z)}")
    acts = _activations.per_layer(activation, len(params) - 1)
    delta = _losses.get(loss).grad(z[-1], y)  # δ_L = ∂E/∂z_L
    grads, dx = [], None
    for l in range(len(params) - 1, -1, -1):  # python index l is layer l + 1
        w, _ = params[l]
        grads.append((_weight_decay(a[l].T @ delta, w, l2), delta.sum(axis=0)))
        if l > 0:  # δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ), f' from the kept a_l = f(z_l)
            delta = acts[l - 1].df_from(z[l - 1], a[l]) * (delta @ w.T)
        elif input_costate:
            dx = delta @ w.T
    grads = tuple(reversed(grads))
    return (grads, dx) if input_costate else grads


def grad(params: Params, x: ArrayLike, y: ArrayLike, *, activation: ActivationArg,
         loss: _losses.LossLike, l2: ArrayLike = 0.0) -> tuple:
    """∂E/∂θ of ``loss(params, x, y)`` by the costate recursion (see ``backprop``).

    δ_L = ∂loss/∂z_L;  δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ);
    ∂E/∂W_l = a_{l-1}ᵀ δ_l + λ W_l;  ∂E/∂b_l = Σₙ δ_l,n.

    Args:
      params, x, activation: as for ``forward``.
      y, loss, l2: as for ``loss``.

    Returns:
      A tuple of (dw, db) pairs shaped like params, in the dtype of x.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual import mlp
        >>> params = ((jnp.ones((2, 3)), jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
        >>> (dw1, db1), (dw2, db2) = mlp.grad(params, jnp.ones((1, 2)), jnp.zeros((1, 1)),
        ...                                   activation="relu", loss="mse")
        >>> dw2.ravel().tolist()   # a_1ᵀ δ_2 with a_1 = (2, 2, 2), δ_2 = 6
        [12.0, 12.0, 12.0]
    """
    _losses.get(loss)  # an unknown name fails before any work
    a, z = stages(params, x, activation=activation)
    return backprop(params, a, z, y, activation=activation, loss=loss, l2=l2)
