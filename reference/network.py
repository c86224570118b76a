"""The oracles of manual.network: a plain-jnp forward of a layer stack, differentiated by JAX.

A network is a tuple of layers, params a tuple with one entry per layer (``()`` for a
layer without parameters, a tuple of inner entries for a ``Residual``), as in
manual.network. This module never imports manual/: it reads a layer's class name and
its attributes (a layer is a description, ``Conv2d(stride=2)``), and computes the
forward here, in a few lines of ``jax.numpy`` and ``jax.lax`` per layer, written without
a line of manual/:

    Linear          x @ w + b                          (D, M), (M,)
    Conv2d          lax.conv_general_dilated, NCHW/OIHW + b   (O, C/groups, kh, kw), (O,)
    Act             f(z) elementwise (a name, or the user's Activation: its ``f``)
    MaxPool2d       lax.reduce_window max, padded with -inf
    AvgPool2d       lax.reduce_window sum of the zero-padded input / window area
    Flatten         (N, ...) -> (N, -1), C order
    GlobalAvgPool   mean over (H, W)
    LayerNorm       (x - μ) / sqrt(σ² + eps) γ + β over the last axis, biased σ²
    SelfAttention   softmax(q kᵀ / √d) v per head, q = x W_q, ..., heads merged, @ W_o
    MeanOverTime    mean over axis 1 of (N, T, D)
    Residual        x + f(x)

and the loss (batch mean): mse ½ mean_n ||z_n - y_n||², softmax cross-entropy
mean_n (logsumexp z_n - z_n[y_n]), or the user's Loss (its ``value``). The oracles are
JAX's transforms of that loss over the parameters:

    grad                    jax.grad
    per_sample_grads        jax.vmap(jax.grad) of each sample's own loss (not / N)
    hvp                     jax.jvp of jax.grad
    hessian                 jax.hessian over ravel_pytree(params)      (P, P)
    hessian_diagonal        its diagonal, params-shaped
    hessian_blocks          its layer-diagonal slices, depth first into Residual
    gauss_newton            Jᵀ Λ J, J = jax.jacrev of the logits over ravel_pytree(params),
                            Λ_n = jax.hessian of sample n's loss in its logits / N
    gauss_newton_diagonal   its diagonal, params-shaped

Example::

    >>> import jax.numpy as jnp
    >>> class Linear: pass
    >>> params = ((jnp.ones((2, 1)), jnp.zeros(1)),)
    >>> forward((Linear(),), params, jnp.ones((3, 2))).ravel().tolist()
    [2.0, 2.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = ["PARAMETRIC", "option", "activation_function", "layer_forward", "forward", "sample_loss",
           "loss", "grad", "per_sample_grads", "hvp", "hessian", "hessian_diagonal",
           "layer_sizes", "hessian_blocks", "gauss_newton", "gauss_newton_diagonal"]

# The layers that carry parameters (one Hessian block each; Residual's are its inner ones).
PARAMETRIC = ("Linear", "Conv2d", "LayerNorm", "SelfAttention")
_GELU_C = float(np.sqrt(2.0 / np.pi))


def option(layer: Any, name: str, default: Any = None) -> Any:
    """A layer's setting ``name``: from its ``options`` dict if it keeps one (Conv2d, the
    pools), else its attribute of that name, else ``default``."""
    options = getattr(layer, "options", None)
    if isinstance(options, dict) and name in options:
        return options[name]
    return getattr(layer, name, default)


def activation_function(activation: Any) -> Callable:
    """z -> f(z): the built-in activations are written here (by name, or by the name of
    an Activation object that carries one of them); a user's own Activation uses its
    own ``f``."""
    name = activation if isinstance(activation, str) else getattr(activation, "name", None)
    table = {
        "relu": lambda z: jnp.maximum(z, 0),
        "leaky_relu": lambda z: jnp.where(z >= 0, z, 0.01 * z),
        "sigmoid": lambda z: 1 / (1 + jnp.exp(-z)),
        "tanh": jnp.tanh,
        "softplus": lambda z: jnp.logaddexp(z, 0),
        "gelu": lambda z: 0.5 * z * (1 + jnp.tanh(_GELU_C * (z + 0.044715 * z ** 3))),
    }
    if name in table:
        return table[name]
    if isinstance(activation, str):
        raise ValueError(f"activation must be one of {sorted(table)} or an Activation, got "
                         f"{activation!r}")
    return activation.f


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(a) for a in v)


def _conv_padding(padding: Any) -> Any:
    if isinstance(padding, str):
        return padding.upper()  # lax's SAME puts the odd extra row after, as torch's "same"
    if np.ndim(padding) == 0:
        return [(int(padding),) * 2] * 2
    if all(np.ndim(p) == 0 for p in padding):
        return [(int(p), int(p)) for p in padding]
    return [tuple(int(a) for a in p) for p in padding]


def _last_axis(v: Any, ndim: int) -> Any:
    """A (D,) vector shaped to broadcast over the last axis of an ndim-array (explicitly:
    the suite runs with rank promotion raising)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _pool(x: Any, layer: Any, init: Any, op: Callable) -> Any:
    window = _pair(option(layer, "window"))
    stride = _pair(option(layer, "stride") or window)
    pad = _pair(option(layer, "padding", 0))
    return lax.reduce_window(x, init, op, (1, 1) + window, (1, 1) + stride,
                             [(0, 0), (0, 0)] + [(p, p) for p in pad])


def _attention(params: dict, x: Any, heads: int, causal: bool) -> Any:
    n, t, d_model = x.shape
    d = d_model // heads

    def split(w):  # (N, T, D) @ (D, D) -> (N, heads, T, d)
        return (x @ params[w]).reshape(n, t, heads, d).transpose(0, 2, 1, 3)

    q, k, v = split("w_q"), split("w_k"), split("w_v")
    scores = jnp.einsum("nhid,nhjd->nhij", q, k) / np.sqrt(d)
    if causal:
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool))[None, None], scores, -jnp.inf)
    out = jnp.einsum("nhij,nhjd->nhid", jax.nn.softmax(scores, axis=-1), v)
    return out.transpose(0, 2, 1, 3).reshape(n, t, d_model) @ params["w_o"]


def layer_forward(layer: Any, params: Any, x: Any) -> Any:
    """One layer of the stack applied to ``x`` (module docstring), by its class name."""
    kind = type(layer).__name__
    if kind == "Linear":
        w, b = params
        return x @ w + _last_axis(b, x.ndim)
    if kind == "Conv2d":
        w, b = params
        y = lax.conv_general_dilated(
            x, w, _pair(option(layer, "stride", 1)), _conv_padding(option(layer, "padding", 0)),
            rhs_dilation=_pair(option(layer, "dilation", 1)),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=int(option(layer, "groups", 1)),
            precision=lax.Precision.HIGHEST)
        return y + b[None, :, None, None]
    if kind == "Act":
        return activation_function(layer.activation)(x)
    if kind == "MaxPool2d":
        return _pool(x, layer, -jnp.inf, lax.max)  # a Python scalar: lax's max-window monoid
    if kind == "AvgPool2d":
        window = _pair(option(layer, "window"))
        return _pool(x, layer, 0.0, lax.add) / (window[0] * window[1])
    if kind == "Flatten":
        return x.reshape(x.shape[0], -1)
    if kind == "GlobalAvgPool":
        return x.mean(axis=(2, 3))
    if kind == "LayerNorm":
        gamma, beta = params
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return ((x - mu) / jnp.sqrt(var + getattr(layer, "eps", 1e-5)) * _last_axis(gamma, x.ndim)
                + _last_axis(beta, x.ndim))
    if kind == "SelfAttention":
        return _attention(params, x, int(option(layer, "heads")),
                          bool(option(layer, "causal", False)))
    if kind == "MeanOverTime":
        return x.mean(axis=1)
    if kind == "Residual":
        return x + _stack(layer.layers, params, x)
    raise ValueError(f"layer: unknown layer type {kind!r}")


def _stack(net: Any, params: Any, x: Any) -> Any:
    if len(params) != len(net):
        raise ValueError(f"params has {len(params)} entries for {len(net)} layers")
    for layer, p in zip(net, params, strict=True):
        x = layer_forward(layer, p, x)
    return x


def forward(net: Any, params: Any, x: Any) -> Any:
    """The logits (N, M) of the stack ``net`` at ``params`` on ``x``."""
    return _stack(tuple(net), params, x)


def sample_loss(loss_fn: Any) -> Callable:
    """(logits (M,), y_n) -> sample n's own loss, written here for a name (a user's Loss:
    its ``value`` on a batch of one)."""
    if not isinstance(loss_fn, str):
        return lambda z, y: loss_fn.value(z[None], y[None])
    if loss_fn == "mse":
        return lambda z, y: 0.5 * jnp.sum((z - y) ** 2)
    if loss_fn == "softmax_cross_entropy":
        return lambda z, y: jax.nn.logsumexp(z) - z[y]
    raise ValueError(f"loss must be 'mse', 'softmax_cross_entropy' or a Loss, got {loss_fn!r}")


def _mean_loss(net: Any, params: Any, x: Any, y: Any, loss_fn: Any) -> Any:
    return jnp.mean(jax.vmap(sample_loss(loss_fn))(forward(net, params, x), y))


def loss(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """The batch-mean loss of the logits (module docstring)."""
    return _mean_loss(net, params, x, y, loss)


def grad(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """jax.grad of the loss over params."""
    return jax.grad(lambda p: _mean_loss(net, p, x, y, loss))(params)


def per_sample_grads(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """jax.vmap(jax.grad) of each sample's own loss: params-shaped, leading axis N."""
    def one(xn, yn):
        return jax.grad(lambda p: _mean_loss(net, p, xn[None], yn[None], loss))(params)

    return jax.vmap(one)(x, y)


def hvp(net: Any, params: Any, x: Any, y: Any, v: Any, *, loss: Any) -> Any:
    """H v as jax.jvp of jax.grad, params-shaped."""
    g = jax.grad(lambda p: _mean_loss(net, p, x, y, loss))
    return jax.jvp(g, (params,), (v,))[1]


def hessian(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """jax.hessian of the loss over ravel_pytree(params): (P, P)."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda p: _mean_loss(net, unravel(p), x, y, loss))(flat)


def hessian_diagonal(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """The diagonal of ``hessian``, params-shaped."""
    return ravel_pytree(params)[1](jnp.diag(hessian(net, params, x, y, loss=loss)))


def layer_sizes(net: Any, params: Any) -> list[int]:
    """The number of parameters of each layer that has some, depth first into Residual:
    consecutive runs of ravel_pytree(params) (tuples flatten in order, dicts by sorted key)."""
    sizes = []
    for layer, p in zip(net, params, strict=True):
        kind = type(layer).__name__
        if kind == "Residual":
            sizes += layer_sizes(layer.layers, p)
        elif kind in PARAMETRIC:
            sizes.append(int(ravel_pytree(p)[0].size))
    return sizes


def _blocks(matrix: Any, net: Any, params: Any) -> tuple:
    offsets = np.cumsum([0] + layer_sizes(tuple(net), params))
    return tuple(matrix[a:b, a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True))


def hessian_blocks(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> tuple:
    """The layer-diagonal (P_l, P_l) slices of ``hessian``, one per layer with parameters."""
    return _blocks(hessian(net, params, x, y, loss=loss), net, params)


def gauss_newton(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """Jᵀ Λ J: J = jax.jacrev of the logits (N, M, P), Λ_n = jax.hessian(ℓ)(z_n) / N."""
    flat, unravel = ravel_pytree(params)
    jac = jax.jacrev(lambda p: forward(net, unravel(p), x))(flat)
    logits = forward(net, params, x)
    lam = jax.vmap(jax.hessian(sample_loss(loss)))(logits, y) / x.shape[0]
    return jnp.einsum("nap,nab,nbq->pq", jac, lam, jac)


def gauss_newton_diagonal(net: Any, params: Any, x: Any, y: Any, *, loss: Any) -> Any:
    """The diagonal of ``gauss_newton``, params-shaped."""
    return ravel_pytree(params)[1](jnp.diag(gauss_newton(net, params, x, y, loss=loss)))
