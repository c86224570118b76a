"""Elementwise activations with their first and second derivatives, by hand.

Each activation is an ``Activation``: ``f(z)``, ``df(z)`` = f'(z) and ``d2f(z)`` = f''(z),
all elementwise and dtype-preserving. The first derivative drives backprop
(δ_l = f'(z_l) ⊙ ...); the second feeds the stagewise Hessian.

    relu        f = max(z, 0)                 f' = [z > 0]             f'' = 0
    leaky_relu  f = z if z >= 0 else 0.01 z   f' = 1 or 0.01           f'' = 0
    sigmoid     s = 1 / (1 + e^-z)            f' = s (1 - s)           f'' = s (1 - s)(1 - 2s)
    tanh        t = tanh z                    f' = 1 - t²              f'' = -2 t (1 - t²)
    softplus    f = log(1 + e^z)              f' = s(z)                f'' = s (1 - s)
    gelu        f = z/2 (1 + tanh u),  u = c (z + a z³),  c = sqrt(2/π),  a = 0.044715
                f' = (1 + t)/2 + z/2 (1 - t²) u'               u' = c (1 + 3 a z²)
                f'' = (1 - t²) (u' - z t u'² + z u''/2)        u'' = 6 a c z

``df_from(z, a)`` is f'(z) given a = f(z) as the forward pass already computed it:
backprop keeps the activations, so tanh' = 1 - a² and sigmoid' = a (1 - a) cost one
multiply instead of a second transcendental (what JAX's autodiff does too); the others
fall back to ``df(z)``. ``d2f_from(z, a)`` is the same for f'' (tanh'' = -2 a (1 - a²),
sigmoid'' = a (1 - a)(1 - 2a)).

Extension point: wherever ``manual.mlp`` and ``manual.stagewise`` take ``activation=``,
they accept a name in ``ACTIVATIONS``, an ``Activation`` of the user's own (its three
functions written by hand, elementwise, in the dtype of z), or a sequence with one of
either per hidden layer (``per_layer``). SiLU, f = z s(z) with s the logistic sigmoid::

    silu = Activation("silu", f=lambda z: z * s(z),
                      df=lambda z: s(z) * (1 + z * (1 - s(z))),
                      d2f=lambda z: s(z) * (1 - s(z)) * (2 + z * (1 - 2 * s(z))))

Kinks follow JAX (``jax.nn``): ReLU'(0) = 0 (the inactive side, as ``jax.nn.relu``'s
custom derivative), leaky ReLU'(0) = 1 (``jax.nn.leaky_relu`` is
``where(z >= 0, z, slope z)``). f'' is 0 away from the kink and taken as 0 at it.

Sources: Hoey, "Derivation of Backpropagation Equations"; Grosse, Lecture 6;
Hendrycks & Gimpel, "Gaussian Error Linear Units" (the tanh approximation).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import activations
    >>> activations.tanh.df(jnp.zeros(2)).tolist()
    [1.0, 1.0]
    >>> [a.name for a in activations.per_layer(["tanh", "relu"], 2)]
    ['tanh', 'relu']
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual.types import Array

__all__ = ["ACTIVATIONS", "LEAKY_SLOPE", "Activation", "ActivationLike", "gelu", "get",
           "leaky_relu", "per_layer", "relu", "sigmoid", "softplus", "tanh"]

LEAKY_SLOPE = 0.01
_GELU_A = 0.044715
_GELU_C = float(np.sqrt(2.0 / np.pi))

class Activation:
    """An elementwise function with its first two derivatives, written by hand.

    Args:
      name: a label for errors and reprs (need not be in ACTIVATIONS).
      f, df, d2f: z -> f(z), f'(z), f''(z), elementwise on any shape, in the dtype of z.
        Only second-order code (manual.stagewise) calls ``d2f``.
      df_from_output: optional a -> f'(z) given a = f(z), where f' is a cheaper function
        of the output (tanh: 1 - a², sigmoid: a (1 - a)); by default f' is ``df(z)``.
      d2f_from_output: the same for f'' (tanh: -2 a (1 - a²)); by default ``d2f(z)``.

    Raises:
      ValueError: a name that is not a string, or f, df, d2f, df_from_output not callable.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual.activations import Activation
        >>> square = Activation("square", f=lambda z: z * z, df=lambda z: 2 * z,
        ...                     d2f=lambda z: 2 * jnp.ones_like(z))
        >>> square.df_from(jnp.ones(2), square.f(jnp.ones(2))).tolist()
        [2.0, 2.0]
    """

    def __init__(self, name: str, f, df, d2f, *, df_from_output=None, d2f_from_output=None):
        if not isinstance(name, str):
            raise ValueError(f"Activation name must be a string, got {type(name).__name__}")
        for arg, fn in (("f", f), ("df", df), ("d2f", d2f)):
            if not callable(fn):
                raise ValueError(f"Activation {name!r}: {arg} must be callable, got "
                                 f"{type(fn).__name__}")
        for arg, fn in (("df_from_output", df_from_output),
                        ("d2f_from_output", d2f_from_output)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Activation {name!r}: {arg} must be callable or None, "
                                 f"got {type(fn).__name__}")
        self.name, self.f, self.df, self.d2f = name, f, df, d2f
        self.df_from_output, self.d2f_from_output = df_from_output, d2f_from_output

    def df_from(self, z: Array, a: Array) -> Array:
        """f'(z) given a = f(z), reusing a where f' is a function of f (tanh, sigmoid)."""
        return self.df(z) if self.df_from_output is None else self.df_from_output(a)

    def d2f_from(self, z: Array, a: Array) -> Array:
        """f''(z) given a = f(z), reusing a where f'' is a function of f (tanh, sigmoid)."""
        return self.d2f(z) if self.d2f_from_output is None else self.d2f_from_output(a)

    def __repr__(self):
        if ACTIVATIONS.get(self.name) is self:
            return f"manual.activations.{self.name}"
        return f"Activation({self.name!r})"


def _sigmoid(z):
    return lax.logistic(z)  # 1 / (1 + e^-z) without overflow for large |z|


def _one(z):
    return jnp.ones_like(z)


relu = Activation(
    "relu",
    f=lambda z: jnp.where(z > 0, z, jnp.zeros_like(z)),
    df=lambda z: jnp.where(z > 0, _one(z), jnp.zeros_like(z)),
    d2f=jnp.zeros_like,
)

leaky_relu = Activation(
    "leaky_relu",
    f=lambda z: jnp.where(z >= 0, z, LEAKY_SLOPE * z),
    df=lambda z: jnp.where(z >= 0, _one(z), LEAKY_SLOPE * _one(z)),
    d2f=jnp.zeros_like,
)


def _sigmoid_d2f(z):
    s = _sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


sigmoid = Activation(
    "sigmoid",
    f=_sigmoid,
    df=lambda z: _sigmoid(z) * (1 - _sigmoid(z)),
    d2f=_sigmoid_d2f,
    df_from_output=lambda s: s * (1 - s),
    d2f_from_output=lambda s: s * (1 - s) * (1 - 2 * s),
)


def _one_minus_square(t):
    # 1 - t² as (1 - t)(1 + t), as JAX's gradient of tanh does: 1 - t is exact near t = ±1
    # (Sterbenz), so no rounding of t² is amplified in the small slopes of saturation
    return (1 - t) * (1 + t)


tanh = Activation(
    "tanh",
    f=jnp.tanh,
    df=lambda z: _one_minus_square(jnp.tanh(z)),
    d2f=lambda z: -2 * jnp.tanh(z) * _one_minus_square(jnp.tanh(z)),
    df_from_output=_one_minus_square,
    d2f_from_output=lambda t: -2 * t * _one_minus_square(t),
)

softplus = Activation(
    "softplus",
    f=lambda z: jnp.logaddexp(z, jnp.zeros_like(z)),  # log(1 + e^z), stable both ways
    df=_sigmoid,
    d2f=lambda z: _sigmoid(z) * (1 - _sigmoid(z)),
)


def _gelu_parts(z):
    u = _GELU_C * (z + _GELU_A * z**3)
    du = _GELU_C * (1 + 3 * _GELU_A * z**2)
    return jnp.tanh(u), du


def _gelu_df(z):
    t, du = _gelu_parts(z)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t**2) * du


def _gelu_d2f(z):
    t, du = _gelu_parts(z)
    d2u = 6 * _GELU_A * _GELU_C * z
    return (1 - t**2) * (du - z * t * du**2 + 0.5 * z * d2u)


gelu = Activation(
    "gelu",
    f=lambda z: 0.5 * z * (1 + _gelu_parts(z)[0]),
    df=_gelu_df,
    d2f=_gelu_d2f,
)

ACTIVATIONS = {a.name: a for a in (relu, leaky_relu, sigmoid, tanh, softplus, gelu)}

# what ``activation=`` takes for one layer
ActivationLike = str | Activation


def get(activation: ActivationLike) -> Activation:
    """The Activation ``activation`` names (one of ACTIVATIONS), or ``activation`` itself.

    Raises:
      ValueError: an unknown name, or neither a name nor an Activation.
    """
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a "
                         f"manual.activations.Activation, got {activation!r}")
    return ACTIVATIONS[activation]


def per_layer(activation: ActivationLike | tuple | list, n_hidden: int) -> tuple:
    """One Activation per hidden layer, first hidden layer first.

    Args:
      activation: a name or an Activation, used for every hidden layer; or a list or
        tuple with exactly one name or Activation per hidden layer.
      n_hidden: the number of hidden layers (the layers with an activation, L - 1).

    Returns:
      A tuple of ``n_hidden`` Activations.

    Raises:
      ValueError: a sequence of the wrong length, or an entry ``get`` rejects.
    """
    if isinstance(activation, (str, Activation)):
        return (get(activation),) * n_hidden
    if not isinstance(activation, (tuple, list)):
        raise ValueError(f"activation must be a name, an Activation or a sequence with one per "
                         f"hidden layer, got {type(activation).__name__}")
    if len(activation) != n_hidden:
        raise ValueError(f"activation must hold one entry per hidden layer ({n_hidden}), got "
                         f"{len(activation)}: {list(activation)!r}")
    return tuple(get(a) for a in activation)
