"""Losses over a batch of logits: value, gradient and per-sample Hessian, by hand.

Both losses average over the batch (logits z: (N, M)).

mse (float targets y: (N, M))::

    E      = 1/(2N) Σₙ ||zₙ - yₙ||²
    dE/dz  = (z - y) / N
    Hₙ     = ∂²(½||zₙ - yₙ||²)/∂zₙ² = I_M,     Hₙ v = v

softmax_cross_entropy (integer labels y: (N,), 0 <= yₙ < M)::

    pₙ     = softmax(zₙ),   lseₙ = log Σₘ exp(zₙₘ)
    E      = 1/N Σₙ (lseₙ - zₙ,yₙ)
    dE/dz  = (p - onehot(y)) / N                (Sadowski, "Notes on Backpropagation")
    Hₙ     = diag(pₙ) - pₙ pₙᵀ,     Hₙ v = pₙ ⊙ (v - pₙ·v)

``hessian`` returns each sample's own Hessian Hₙ, not divided by N (the stagewise
Hessian divides once, at the end).

Extension point: wherever ``manual.mlp`` and ``manual.stagewise`` take ``loss=``, they
accept a name in ``LOSSES`` or a ``Loss`` of the user's own, built from three hand-
written functions of (logits (N, M), y) with the conventions above: ``value`` the batch
mean, ``grad`` its gradient in the logits (so each row carries the 1/N), ``hessian``
each sample's own M x M Hessian (no 1/N). Huber with threshold 1 on every logit, as a
batch mean of per-sample sums::

    huber = Loss("huber",
                 value=lambda z, y: jnp.sum(jnp.where(abs(z - y) <= 1, (z - y)**2 / 2,
                                                      abs(z - y) - 0.5)) / z.shape[0],
                 grad=lambda z, y: jnp.clip(z - y, -1, 1) / z.shape[0],
                 hessian=lambda z, y: ((abs(z - y) <= 1)[:, :, None]
                                       * jnp.eye(z.shape[1], dtype=z.dtype)[None]))

The log-sum-exp subtracts the row maximum first, so logits of ±1e4 stay finite in
float32.

Labels are checked for dtype and shape at trace time. Their values can only be checked
on concrete arrays: eagerly, an out-of-range label is a ValueError; under ``jax.jit``
the values are unknown while tracing, so the loss and its gradient for a batch with an
out-of-range label are NaN instead of silently wrong (the Hessian does not depend on
the labels).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import losses
    >>> losses.softmax_cross_entropy.grad(jnp.zeros((1, 2)), jnp.array([0])).tolist()
    [[-0.5, 0.5]]
"""

import jax.numpy as jnp
import numpy as np

from manual._checks import require_float, require_rank
from manual._factor import signed_columns
from manual.types import Array, ArrayLike

__all__ = ["LOSSES", "Loss", "LossLike", "get", "mse", "softmax_cross_entropy"]


def _check_logits(logits):
    require_float("logits", logits)
    require_rank("logits", logits, 2)


def _check_batch(logits, y):
    """The default check of a user's Loss: float (N, M) logits, y with N rows."""
    _check_logits(logits)
    n = np.shape(logits)[0]
    if np.ndim(y) < 1 or np.shape(y)[0] != n:
        raise ValueError(f"y must have one row per sample ({n}) to match logits "
                         f"{tuple(np.shape(logits))}, got shape {tuple(np.shape(y))}")


class Loss:
    """A batch-mean loss with its gradient and per-sample Hessian in the logits.

    Args:
      name: a label for errors and reprs (need not be in LOSSES).
      value: (logits (N, M), y) -> the batch-mean loss, a scalar.
      grad: (logits, y) -> ∂value/∂logits, (N, M): each sample's loss gradient / N.
      hessian: (logits, y) -> (N, M, M), each sample's own loss Hessian in its logits,
        NOT divided by N (the stagewise code divides once).
      check: optional (logits, y) -> None raising ValueError on bad input, run at trace
        time before each of the three; by default logits must be float (N, M) and y
        have N rows.
      hessian_vp: optional (logits, y, v) -> (N, M), each sample's Hessian times its row
        of v (no 1/N), for Hessian-vector products that need not form (N, M, M); by
        default the product with ``hessian``.
      hessian_columns: optional (logits, y) -> (c (N, K, M), w (N, K)) with each
        sample's Hessian Σ_k w_k c_k c_kᵀ (no 1/N), the factored form manual.network
        starts its second-order costate from; by default the 2M signed columns of
        ``hessian`` (manual/_factor.py).

    Raises:
      ValueError: a name that is not a string, or value, grad, hessian, check not callable.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual.losses import Loss
        >>> half_sq = Loss("half_sq", value=lambda z, y: 0.5 * jnp.sum(z**2) / z.shape[0],
        ...                grad=lambda z, y: z / z.shape[0],
        ...                hessian=lambda z, y: jnp.broadcast_to(jnp.eye(z.shape[1]),
        ...                                                      z.shape + z.shape[1:]))
        >>> half_sq.grad(jnp.ones((2, 1)), jnp.zeros((2, 1))).tolist()
        [[0.5], [0.5]]
    """

    def __init__(self, name: str, value, grad, hessian, *, check=None, hessian_vp=None,
                 hessian_columns=None):
        if not isinstance(name, str):
            raise ValueError(f"Loss name must be a string, got {type(name).__name__}")
        for arg, fn in (("value", value), ("grad", grad), ("hessian", hessian)):
            if not callable(fn):
                raise ValueError(f"Loss {name!r}: {arg} must be callable, got "
                                 f"{type(fn).__name__}")
        for arg, fn in (("check", check), ("hessian_vp", hessian_vp),
                        ("hessian_columns", hessian_columns)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Loss {name!r}: {arg} must be callable or None, got "
                                 f"{type(fn).__name__}")
        self.name, self._value, self._grad, self._hessian = name, value, grad, hessian
        self._check = _check_batch if check is None else check
        self._hessian_vp = hessian_vp
        self._hessian_columns = hessian_columns

    def value(self, logits: ArrayLike, y: ArrayLike) -> Array:
        """The batch-mean loss, a scalar of the logits' dtype."""
        self._check(logits, y)
        return self._value(logits, y)

    def grad(self, logits: ArrayLike, y: ArrayLike) -> Array:
        """Gradient of the batch mean with respect to the logits, (N, M)."""
        self._check(logits, y)
        return self._grad(logits, y)

    def hessian(self, logits: ArrayLike, y: ArrayLike) -> Array:
        """Each sample's own loss Hessian in its logits, (N, M, M) (not divided by N)."""
        self._check(logits, y)
        return self._hessian(logits, y)

    def hessian_vp(self, logits: ArrayLike, y: ArrayLike, v: ArrayLike) -> Array:
        """Each sample's Hessian times its row of v, (N, M) (not divided by N)."""
        self._check(logits, y)
        if self._hessian_vp is not None:
            return self._hessian_vp(logits, y, v)
        return jnp.einsum("nab,nb->na", self._hessian(logits, y), v)

    def hessian_columns(self, logits: ArrayLike, y: ArrayLike) -> tuple:
        """Each sample's Hessian as signed columns: (c (N, K, M), w (N, K)) with
        Hₙ = Σ_k w_nk c_nk c_nkᵀ (not divided by N)."""
        self._check(logits, y)
        if self._hessian_columns is not None:
            return self._hessian_columns(logits, y)
        return signed_columns(self._hessian(logits, y))

    def __repr__(self):
        if LOSSES.get(self.name) is self:
            return f"manual.losses.{self.name}"
        return f"Loss({self.name!r})"


def _check_mse(logits, y):
    _check_logits(logits)
    require_float("y", y)
    if jnp.shape(y) != jnp.shape(logits):
        raise ValueError(f"y must have the shape of logits {jnp.shape(logits)} for mse, "
                         f"got {jnp.shape(y)}")
    if jnp.result_type(y) != jnp.result_type(logits):
        raise ValueError(f"y must have the dtype of logits ({jnp.result_type(logits)}), "
                         f"got {jnp.result_type(y)}")


def _concrete(y):
    """y as a numpy array if its values are known now (not traced), else None."""
    try:
        return np.asarray(y)
    except Exception:  # a tracer under jit: values unknown until run time
        return None


def _check_labels(logits, y):
    _check_logits(logits)
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"y must be integer class labels for softmax_cross_entropy, got "
                         f"shape {jnp.shape(y)} and dtype {jnp.result_type(y)}")
    n, m = jnp.shape(logits)
    if jnp.shape(y) != (n,):
        raise ValueError(f"y must have shape (N,) = ({n},) to match logits {(n, m)}, "
                         f"got {jnp.shape(y)}")
    labels = _concrete(y)
    if labels is not None and labels.size and (labels.min() < 0 or labels.max() >= m):
        raise ValueError(f"y must hold labels in [0, {m}) for logits {(n, m)}, "
                         f"got values in [{labels.min()}, {labels.max()}]")


def _mse_value(z, y):
    r = z - y
    return 0.5 * jnp.sum(r * r) / z.shape[0]


def _mse_grad(z, y):
    return (z - y) / z.shape[0]


def _mse_columns(z, y):
    n, m = z.shape  # I = Σ_m e_m e_mᵀ
    return (jnp.broadcast_to(jnp.eye(m, dtype=z.dtype), (n, m, m)),
            jnp.ones((n, m), z.dtype))


def _mse_hessian(z, y):
    n, m = z.shape
    return jnp.broadcast_to(jnp.eye(m, dtype=z.dtype), (n, m, m))


def _log_softmax(z):
    z_max = jnp.max(z, axis=1, keepdims=True)  # shift by the row max: exp never overflows
    shifted = z - z_max
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))


def _onehot(y, m, dtype):
    return (y[:, None] == jnp.arange(m)[None, :]).astype(dtype)


def _valid(y, m):
    return jnp.all((y >= 0) & (y < m))


def _ce_value(z, y):
    n, m = z.shape
    nll = -jnp.sum(_onehot(y, m, z.dtype) * _log_softmax(z)) / n
    return jnp.where(_valid(y, m), nll, jnp.nan)  # see module doc: labels under jit


def _ce_grad(z, y):
    n, m = z.shape
    p = jnp.exp(_log_softmax(z))
    # p - onehot(y) as one fused compare-and-subtract: no one-hot array is kept around
    delta = (p - _onehot(y, m, z.dtype)) / n
    return jnp.where(_valid(y, m), delta, jnp.nan)  # see module doc: labels under jit


def _ce_hessian(z, y):
    p = jnp.exp(_log_softmax(z))
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    return p[:, :, None] * eye[None, :, :] - p[:, :, None] * p[:, None, :]


def _ce_columns(z, y):
    # diag p - p pᵀ = Σ_m p_m (e_m - p)(e_m - p)ᵀ  (Σ_m p_m = 1)
    p = jnp.exp(_log_softmax(z))
    eye = jnp.eye(z.shape[1], dtype=z.dtype)
    return eye[None] - p[:, None, :], p


def _ce_hessian_vp(z, y, v):
    p = jnp.exp(_log_softmax(z))  # (diag p - p pᵀ) v = p ⊙ (v - p·v)
    return p * (v - jnp.sum(p * v, axis=1, keepdims=True))


mse = Loss("mse", _mse_value, _mse_grad, _mse_hessian, check=_check_mse,
           hessian_vp=lambda z, y, v: v, hessian_columns=_mse_columns)
softmax_cross_entropy = Loss("softmax_cross_entropy", _ce_value, _ce_grad, _ce_hessian,
                             check=_check_labels, hessian_vp=_ce_hessian_vp,
                             hessian_columns=_ce_columns)

LOSSES = {loss.name: loss for loss in (mse, softmax_cross_entropy)}

# what ``loss=`` takes
LossLike = str | Loss


def get(loss: LossLike) -> Loss:
    """The Loss ``loss`` names (one of LOSSES), or ``loss`` itself.

    Raises:
      ValueError: an unknown name, or neither a name nor a Loss.
    """
    if isinstance(loss, Loss):
        return loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a manual.losses.Loss, "
                         f"got {loss!r}")
    return LOSSES[loss]
