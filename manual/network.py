"""Exact curvature of any stack of layers — convolution, pooling, residual blocks, layer
norm, attention — by stagewise second-order backprop, by hand.

A network is a tuple of layers; ``params`` a tuple with one entry per layer (``()`` for a
layer without parameters, a tuple of inner entries for ``Residual``). Layers carry no
sizes: the shapes come from params (``init`` makes params from sizes the caller gives).

    Linear()                      (w (D, M), b (M,)); x (..., D) -> x @ w + b
    Conv2d(*, stride, padding, dilation, groups)   (w (O, C/groups, kh, kw), b (O,)); NCHW
    Act(activation)               a name or a manual.activations.Activation
    MaxPool2d(window, *, stride, padding), AvgPool2d(window, *, stride, padding)
    Flatten()                     (N, ...) -> (N, -1), C order
    GlobalAvgPool()               (N, C, H, W) -> (N, C)
    LayerNorm(*, eps)             (gamma (D,), beta (D,)) over the last axis
    SelfAttention(heads, *, causal)   {"w_k", "w_o", "w_q", "w_v"}, (D, D) each; x (N, T, D)
    MeanOverTime()                (N, T, D) -> (N, D)
    Residual(*layers)             y = x + f(x)

The output is the logits (N, M); E = 1/N Σₙ ℓ(zₙ, yₙ) (``loss=`` a name or a
manual.losses.Loss). There is no ``l2=``: the Hessian of ½ λ Σ ||W||² is λ on the
weights' diagonal, which the caller adds.

**The recursion** (Mizutani & Dreyfus's stagewise second-order backprop, for any stack).
Per sample, with δ the first-order costate at a layer's output y = F(x, θ) and Ω the
second-order costate ∂²E/∂y∂y there, each layer (manual/_network_layers.py, its rules
in each docstring) supplies J_x, J_θ and its own second-order terms
T = Σ_k δ_k ∇² y_k::

    Ω_top = ℓ''(z) / N
    Ω_x   = J_xᵀ Ω_y J_x + T_xx                        (the costate passed down)
    H_θθ  = Σₙ J_θᵀ Ω_y J_θ + T_θθ                     (the layer's diagonal block)
    diag H_θ = Σₙ diag(J_θᵀ Ω_y J_θ) + diag T_θθ

(the input of a layer does not depend on its own θ, so the mixed terms T_xθ reach only
off-diagonal blocks). Residual: Ω_x = (I + J_f)ᵀ Ω_y (I + J_f) + T_f.

**Which Ω is dense, which factored.** Ω is carried factored, per sample, as signed
columns: Ω = Σ_k w_k c_k c_kᵀ, c (N, K, *shape), w (N, K). At the logits K = M (the
loss's own factor of ℓ'', over N: for softmax cross-entropy diag p - p pᵀ = Σ_m p_m
(e_m - p)(e_m - p)ᵀ; a Loss without one gets 2M signed columns). J_xᵀ maps columns to
columns (the layer's first-order backward over N·K images: no vmap, the column axis
rides with the batch), and each column's own parameter gradient g = c J_θ gives the
block Σ w g gᵀ and the diagonal Σ w g² — no (P, P) matrix is ever formed for the
diagonal. The T_xx terms join as more columns:

    Act            diag(δ ⊙ f''(z)) (none for relu, leaky_relu); for the diagonal it
                   stays a diagonal part diag(s) of Ω (below), else U one-hot columns
    LayerNorm      dense per row, D x D: exactly D + 4 columns per row (its docstring)
    SelfAttention  dense per sample, T D x T D: from the R-op along T D unit tangents,
                   written as 2 T D signed columns; its T_θθ is closed form on the
                   diagonal and from the R-op along 4 D² tangents for the block
    the rest       0 (linear in x, or max pooling: 0 almost everywhere)

No eigendecomposition is used anywhere: a symmetric Ω (F x F) becomes 2F signed columns
e_f ± t_f Ω_f (manual/_factor.py). When the columns at a top-level layer boundary
outnumber 4F, they are replaced so.

**The diagonal's cheaper forms** (``hessian_diagonal``, ``gauss_newton_diagonal``):

    diagonal part  Ω = Σ w c cᵀ + diag(s). An activation's f'' term is s; Act maps s to
                   f'² s, max pooling routes it like δ (each output reads one input),
                   Flatten reshapes it. Linear and Conv2d take its share of their
                   diagonal in closed form (Σ x² s: the weight gradient of x² against
                   s) and pass Jᵀ diag(s) J on as shared columns, one per output unit,
                   pulled back once for the whole batch (J_x is W for every sample).
                   Any other layer, and a Residual, turns s into one-hot columns.
    channel blocks Below the last layer that mixes channels, when the lowest layer
                   with parameters is a Conv2d reached through Act and pools only, its
                   weights' diagonal needs only Ω's channel blocks B (N, C, L, L),
                   L = H W: diag W[o, i] = Σₙ Σ_{l,m} P[i, l] B[o, l, m] P[i, m] with P
                   the im2col patches. The blocks replace the columns there when L is
                   smaller than their number K (N C L² numbers instead of N K C L).

Cost on the bench's CNN (tanh, 256 units under its second conv): 10 Gauss-Newton
columns, the f'' term as s, 266 columns at the first pooling's output turned into
8 channel blocks of 16 x 16: about 17 times one gradient. The ResNet block (relu)
costs M = 10 backward passes plus the per-column weight gradients, 2 N M P flops.

``hvp`` is Pearlmutter's R-op, hand-derived per layer (``tangent`` and
``backward_tangent``): one forward tangent pass and one differentiated backward,
about the cost of autodiff's forward-over-reverse product. ``gauss_newton`` is the Gram
G = Σ w g gᵀ of the Gauss-Newton columns' whole-network gradients.

``hessian``. With δ_top held fixed, H - G = Σₙ Σ_k δ_k ∇²_θ z_k. A stack of
piecewise-linear layers (Linear, Conv2d, relu and leaky_relu, the pools, Flatten,
GlobalAvgPool, MeanOverTime, Residual of these) has T_xx = T_θθ = 0 almost everywhere:
z is multilinear in the layers' parameters (each path meets a layer once), so only the
mixed terms remain. The layer's gradient δ_lᵀ ∂y_l/∂θ_l depends on θ_m below it only
through its input x_l (δ_l depends on the layers above), so along the unit tangent of
one entry θ_j of layer m, ∂²E/∂θ_l∂θ_j = T_θx ẋ_l, the weight gradient with ẋ_l (the
forward tangent of x_l) in place of x_l. Hence

    H = G + A + Aᵀ,   A[j, i] = (T_θx ẋ_l(e_j))_i  for θ_i in a layer l after m,

one tangent pass per parameter, from its own layer up (zero below it, never computed),
and no backward pass. Any other stack: the hvp along the P unit vectors (lax.map; every
entry exact).

Ravel order is jax.flatten_util.ravel_pytree's: layers in order, depth first into
Residual, each layer's leaves in order (dict keys sorted: w_k, w_o, w_q, w_v).

Source: E. Mizutani & S. E. Dreyfus, "Second-order stagewise backpropagation for
Hessian-matrix analyses and investigation of negative curvature" (Neural Networks 21,
2008); B. Pearlmutter, "Fast exact multiplication by the Hessian" (1994).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from manual import network
    >>> net = (network.Linear(), network.Act("tanh"), network.Linear())
    >>> x = jnp.ones((4, 3))
    >>> params = network.init(net, jax.random.PRNGKey(0), x.shape, (5, None, 2), dtype=x.dtype)
    >>> y = jnp.array([0, 1, 1, 0])
    >>> d = network.hessian_diagonal(net, params, x, y, loss="softmax_cross_entropy")
    >>> [leaf.shape for layer in d for leaf in layer]
    [(3, 5), (5,), (5, 2), (2,)]
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import losses as _losses
from manual._factor import signed_columns
from manual._network_layers import (
    Act,
    AvgPool2d,
    Conv2d,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    Linear,
    MaxPool2d,
    MeanOverTime,
    Residual,
    SelfAttention,
    describe,
    stack_backward,
    stack_backward_tangent,
    stack_check,
    stack_forward,
    stack_init,
    stack_tangent,
)
from manual.types import Array, ArrayLike, DTypeLike

__all__ = ["Act", "AvgPool2d", "Conv2d", "Flatten", "GlobalAvgPool", "Layer", "LayerNorm",
           "Linear", "MaxPool2d", "MeanOverTime", "Residual", "SelfAttention", "check",
           "forward", "gauss_newton", "gauss_newton_diagonal", "grad", "hessian",
           "hessian_blocks", "hessian_diagonal", "hvp", "init", "leaves", "loss",
           "per_sample_grads"]

Net = tuple | list
Params = tuple | list


# --- params as trees (tuples, lists, dicts with sorted keys, arrays) --------------------

def leaves(tree: object) -> list:
    """The arrays of a params tree in ravel_pytree order (dict keys sorted)."""
    if isinstance(tree, dict):
        return [a for k in sorted(tree) for a in leaves(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [a for t in tree for a in leaves(t)]
    return [tree]


def _map(fn, tree, *rest):
    if isinstance(tree, dict):
        return {k: _map(fn, tree[k], *(r[k] for r in rest)) for k in tree}
    if isinstance(tree, (tuple, list)):
        return tuple(_map(fn, t, *(r[i] for r in rest)) for i, t in enumerate(tree))
    return fn(tree, *rest)


def _unravel(tree, flat):
    """A params-shaped tree from a flat vector in ravel order."""
    sizes = [int(np.size(a)) for a in leaves(tree)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = iter(range(len(sizes)))

    def take(a):
        i = next(parts)
        return flat[offsets[i]:offsets[i + 1]].reshape(np.shape(a))
    return _map_ordered(take, tree)


def _map_ordered(fn, tree):
    """_map visiting leaves in ravel order (sorted dict keys)."""
    if isinstance(tree, dict):
        return {k: _map_ordered(fn, tree[k]) for k in sorted(tree)}
    if isinstance(tree, (tuple, list)):
        return tuple(_map_ordered(fn, t) for t in tree)
    return fn(tree)


# --- validation --------------------------------------------------------------------------

def check(net: Net, params: Params, x: ArrayLike) -> tuple:
    """Validate a network, its params and an input batch; returns the logits' shape.

    Raises:
      ValueError: net not a tuple of layers; x not a floating-point batch; params not
        one entry per layer, or a wrong shape or dtype at some layer (the message names
        the layer's index, dotted into a Residual: "layer 2.0", and what it got); an
        output that is not (N, M).
    """
    if not isinstance(net, (tuple, list)) or not net or not all(
            isinstance(layer, Layer) for layer in net):
        raise ValueError(f"net must be a non-empty tuple of manual.network layers, got "
                         f"{net!r}")
    if not hasattr(x, "shape") or not jnp.issubdtype(jnp.result_type(x), jnp.floating) \
            or np.ndim(x) < 2:
        raise ValueError(f"x must be a floating-point batch (N, ...), got {describe(x)}")
    out = stack_check(tuple(net), params, tuple(np.shape(x)), jnp.result_type(x))
    if len(out) != 2:
        raise ValueError(f"the network must end in logits (N, M), got output shape {out} "
                         f"(add Flatten, GlobalAvgPool or MeanOverTime, then Linear)")
    return out


def init(net: Net, key: ArrayLike, x_shape: tuple, sizes: tuple, *,
         dtype: DTypeLike = jnp.float32) -> tuple:
    """Params for ``net`` from the sizes the caller gives, one entry per layer.

    Args:
      net: the layers.
      key: a jax.random key.
      x_shape: the input batch's shape (N, ...).
      sizes: per layer: Linear the output width M; Conv2d (out_channels, kernel) with
        kernel an int or a pair; Residual a tuple of its inner layers' sizes; any other
        layer None (its shapes follow from its input).
      dtype: of every parameter.

    Returns:
      params: weights N(0, 1/fan_in), biases and beta zero, gamma one.
    """
    if not isinstance(net, (tuple, list)) or not all(isinstance(la, Layer) for la in net):
        raise ValueError(f"net must be a tuple of manual.network layers, got {net!r}")
    return stack_init(tuple(net), key, tuple(x_shape), sizes, jnp.dtype(dtype))


# --- first order -------------------------------------------------------------------------

def forward(net: Net, params: Params, x: ArrayLike) -> Array:
    """The logits (N, M)."""
    check(net, params, x)
    return stack_forward(tuple(net), params, x)[0]


def loss(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
         loss: _losses.LossLike) -> Array:
    """E = 1/N Σₙ ℓ(zₙ, yₙ), a scalar."""
    return _losses.get(loss).value(forward(net, params, x), y)


def _first_order(net, params, x, y, loss):
    check(net, params, x)
    loss = _losses.get(loss)
    z, states = stack_forward(tuple(net), params, x)
    delta = loss.grad(z, y)
    _, grads, dys = stack_backward(tuple(net), params, states, delta)
    return loss, z, states, grads, dys


def grad(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
         loss: _losses.LossLike) -> tuple:
    """∂E/∂θ, params-shaped: δ_top = ℓ'(z)/N, then each layer's first-order backward."""
    return _first_order(net, params, x, y, loss)[3]


# --- the column recursion ----------------------------------------------------------------

def _compress(c, w):
    """Columns replaced by 2F signed columns of Ω = Σ w c cᵀ (manual/_factor.py) when
    they outnumber 4F, F the per-sample size (exact)."""
    n, k = c.shape[:2]
    f = int(np.prod(c.shape[2:]))
    if k <= 4 * f:
        return c, w
    flat = c.reshape(n, k, f)
    c2, w2 = signed_columns(jnp.einsum("nki,nk,nkj->nij", flat, w, flat))
    return c2.reshape(c.shape[:1] + (2 * f,) + c.shape[2:]), w2


def _join(c, w, extra):
    if extra is None:
        return c, w
    return jnp.concatenate([c, extra[0]], axis=1), jnp.concatenate([w, extra[1]], axis=1)


def _unit_columns(s):
    """diag(s) as one one-hot column per unit, weights s."""
    n, units = s.shape[0], int(np.prod(s.shape[1:]))
    eye = jnp.eye(units, dtype=s.dtype).reshape((1, units) + s.shape[1:])
    return jnp.broadcast_to(eye, (n, units) + s.shape[1:]), s.reshape(n, units)


def _block_run(layers):
    """(bottom, top) when the lowest layer with parameters, at ``bottom``, is a Conv2d and
    the layers bottom+1..top keep channels apart (Act, the pools): there its weights'
    diagonal needs only the channel blocks of Ω, which those layers carry; else None."""
    with_params = [i for i, layer in enumerate(layers) if layer.has_params]
    if not with_params or not isinstance(layers[with_params[0]], Conv2d):
        return None
    bottom = top = with_params[0]
    while top + 1 < len(layers) and isinstance(layers[top + 1], (Act, AvgPool2d, MaxPool2d)):
        top += 1
    return bottom, top


def _blocks(c, w, s):
    """The channel blocks B (N, C, L, L) of Σ w c cᵀ + diag(s), c (N, K, C, H, W)."""
    n, k, ch = c.shape[:3]
    flat = c.reshape(n, k, ch, -1)
    b = jnp.einsum("nkci,nk,nkcj->ncij", flat, w, flat)
    if s is not None:
        b = b + _diag_embed(s.reshape(n, ch, -1))
    return b


def _diag_embed(d):
    """(..., L) -> (..., L, L) with d on the diagonal."""
    eye = jnp.eye(d.shape[-1], dtype=d.dtype)
    return d[..., :, None] * eye.reshape((1,) * (d.ndim - 1) + eye.shape)


def _push_blocks(layers, params, states, dys, b, visit, exact, run):
    """The channel blocks from the output of layers[top] down to layers[bottom]."""
    bottom, top = run
    for i in range(top, bottom, -1):
        layer, p, state, dy = layers[i], params[i], states[i], dys[i]
        b = layer.pull_blocks(p, state, b)
        t = layer.second_order_diagonal(p, state, dy) if exact else None
        if t is not None:
            b = b + _diag_embed(t.reshape(t.shape[:2] + (-1,)))
    visit((bottom,), layers[bottom], params[bottom], states[bottom], dys[bottom], None,
          None, None, None, b)


def _push(layers, params, states, dys, c, w, visit, exact, diagonal=False, s=None, path=(),
          top=True):
    """Carry Ω = Σ w c cᵀ + diag(s) from the output of ``layers`` to its input, calling
    visit(path, layer, p, state, dy, c, g, w, s, b) at every layer with parameters (c the
    columns at its output, g their parameter gradients, leaves (N, K, ...), s the
    diagonal part there or None, b None). ``diagonal``: the activations' f'' terms are
    carried as diagonals (s) while the layers below take them (pull_diagonal), else as
    columns; and below the last layer that mixes channels, when they are fewer than the
    columns, Ω's channel blocks (b (N, C, L, L); then c, g, w and s are None)."""
    run = _block_run(layers) if diagonal and top else None
    for i in reversed(range(len(layers))):
        layer, p, state, dy = layers[i], params[i], states[i], dys[i]
        if run is not None and i == run[1] and int(np.prod(dys[run[0]].shape[2:])) < c.shape[1]:
            _push_blocks(layers, params, states, dys, _blocks(c, w, s), visit, exact, run)
            return None, None, None
        if isinstance(layer, Residual):
            if s is not None:        # the skip's cross terms need s as columns
                c, w = _join(c, w, _unit_columns(s))
                s = None
            inner_dys = stack_backward(layer.layers, p, state, dy)[2]
            branch, w_branch, s = _push(layer.layers, p, state, inner_dys, c, w, visit,
                                        exact, diagonal, None, path + (i,), top=False)
            c, w = layer.join_columns(c, branch, w, w_branch)
        else:
            pulled = None if s is None else layer.pull_diagonal(p, state, s)
            if s is not None and pulled is None:
                c, w = _join(c, w, _unit_columns(s))
                s = None
            c_in, g = layer.pullback(p, state, c)
            if layer.has_params:
                visit(path + (i,), layer, p, state, dy, c, g, w, s, None)
            s, extra = (None, None) if pulled is None else pulled
            c, w = _join(c_in, w, extra)
            if exact:
                t = layer.second_order_diagonal(p, state, dy) if diagonal else None
                if t is not None:
                    s = t if s is None else s + t
                else:
                    c, w = _join(c, w, layer.second_order(p, state, dy))
        if top and exact:
            c, w = _compress(c, w)
    return c, w, s


def _top_columns(loss, z, y):
    """Ω_top = ℓ''(z)/N per sample as signed columns (N, K, M) and weights / N."""
    c, w = loss.hessian_columns(z, y)
    return c, w / z.shape[0]


def _collect(net, params, x, y, loss, exact, visit, diagonal=False):
    loss, z, states, _, dys = _first_order(net, params, x, y, loss)
    c, w = _top_columns(loss, z, y)
    found = {}
    _push(tuple(net), params, states, dys, c, w,
          lambda path, *args: found.__setitem__(path, visit(*args)), exact, diagonal)
    return found


def _rebuild(net, params, found, fill):
    """A params-shaped tuple: found[path] for layers with parameters, fill(p) else."""
    def build(layers, ps, path):
        out = []
        for i, (layer, p) in enumerate(zip(layers, ps, strict=True)):
            if isinstance(layer, Residual):
                out.append(build(layer.layers, p, path + (i,)))
            else:
                out.append(found[path + (i,)] if layer.has_params else fill(p))
        return tuple(out)
    return build(tuple(net), params, ())


def _diagonal(net, params, x, y, loss, exact):
    def visit(layer, p, state, dy, c, g, w, s, b):
        d = layer.column_diagonal(p, state, c, g, w) if b is None else \
            layer.block_diagonal(p, state, b)
        for more in (layer.own_diagonal(p, state, dy) if exact else None,
                     None if s is None else layer.diagonal_from(p, state, s)):
            d = d if more is None else _map(jnp.add, d, more)
        return d
    return _rebuild(net, params, _collect(net, params, x, y, loss, exact, visit, True),
                    tuple)


def hessian_diagonal(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
                     loss: _losses.LossLike) -> tuple:
    """The diagonal of the exact Hessian, params-shaped; no (P, P) matrix formed.

    diag H_θ = Σₙ Σ_k w_k (c_k J_θ)² + diag T_θθ over the columns of Ω at each layer's
    output (module doc). Add λ on the weights for an l2 penalty ½ λ Σ ||W||².

    Args:
      net: a tuple of layers.
      params: one entry per layer.
      x: the input batch (N, ...).
      y: what ``loss`` takes (integer labels (N,) for "softmax_cross_entropy").
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss.
    """
    return _diagonal(net, params, x, y, loss, True)


def gauss_newton_diagonal(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
                          loss: _losses.LossLike) -> tuple:
    """The diagonal of the Gauss-Newton matrix Σₙ Jₙᵀ ℓ''ₙ Jₙ / N, params-shaped: the
    recursion with only the M columns of ℓ'' (no T terms)."""
    return _diagonal(net, params, x, y, loss, False)


def _rows(g):
    """Per-column gradients (leaves (N, K, ...)) as (N·K, P_l) in ravel order."""
    parts = leaves(g)
    n, k = parts[0].shape[:2]
    return jnp.concatenate([a.reshape(n * k, -1) for a in parts], axis=1)


def hessian_blocks(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
                   loss: _losses.LossLike) -> tuple:
    """The diagonal blocks H_θθ = Σₙ J_θᵀ Ω_y J_θ + T_θθ, one (P_l, P_l) per layer with
    parameters, in the order the layers appear (depth first into Residual), each in the
    ravel order of its params. Arguments as ``hessian_diagonal``."""
    def visit(layer, p, state, dy, c, g, w, s, b):
        rows = _rows(g)
        block = rows.T @ (w.reshape(-1, 1) * rows)
        own = layer.own_block(p, state, dy)
        return block if own is None else block + own
    found = _collect(net, params, x, y, loss, True, visit)
    return tuple(found[path] for path in sorted(found))


def gauss_newton(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
                 loss: _losses.LossLike) -> Array:
    """The Gauss-Newton matrix G = Σₙ Jₙᵀ ℓ''ₙ Jₙ / N, (P, P) in ravel order: the Gram
    Σ w g gᵀ of the M columns' whole-network gradients."""
    found = _collect(net, params, x, y, loss, False, lambda *args: (_rows(args[5]),
                                                                     args[6].reshape(-1)))
    rows = jnp.concatenate([found[path][0] for path in sorted(found)], axis=1)
    w = found[min(found)][1]
    return rows.T @ (w[:, None] * rows)


def per_sample_grads(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
                     loss: _losses.LossLike) -> tuple:
    """The gradient of each sample's own loss (not divided by N), params-shaped with a
    leading N axis on every leaf: one column per sample, N δₙ, pulled back."""
    loss, z, states, _, dys = _first_order(net, params, x, y, loss)
    c = (z.shape[0] * loss.grad(z, y))[:, None]
    found = {}
    _push(tuple(net), params, states, dys, c, jnp.ones(c.shape[:2], z.dtype),
          lambda path, layer, p, state, dy, c, g, w, s, b: found.__setitem__(
              path, _map(lambda a: a[:, 0], g)), False)
    return _rebuild(net, params, found,
                    lambda p: _map(lambda a: jnp.zeros((z.shape[0],) + a.shape, a.dtype), p))


# --- second order by the R-op ------------------------------------------------------------

def _check_v(params, v):
    ps, vs = leaves(params), leaves(v)
    if len(ps) != len(vs) or any(np.shape(a) != np.shape(b) or
                                 jnp.result_type(a) != jnp.result_type(b)
                                 for a, b in zip(ps, vs, strict=False)):
        raise ValueError(f"v must have the structure, shapes and dtypes of params, got "
                         f"{describe(v)} for params {describe(params)}")


def hvp(net: Net, params: Params, x: ArrayLike, y: ArrayLike, v: Params, *,
        loss: _losses.LossLike) -> tuple:
    """H v, params-shaped, by the hand-derived R-op (Pearlmutter): ẋ through every
    layer's ``tangent`` (θ̇ = v), δ̇_top = ℓ''(z) ż / N, then every layer's
    ``backward_tangent``. Arguments as ``hessian_diagonal``; v params-shaped."""
    _check_v(params, v)
    loss, z, states, _, dys = _first_order(net, params, x, y, loss)
    zdot, xdots = stack_tangent(tuple(net), params, states, jnp.zeros_like(x), v)
    dydot = loss.hessian_vp(z, y, zdot) / z.shape[0]
    return stack_backward_tangent(tuple(net), params, states, dys, xdots, v, dydot)[1]


def _mixed_rows(layers, params, states, dys, start, pdot, xdot=None, path=()):
    """One tangent pass with θ̇ = pdot on the layer at ``start`` alone (None: a tangent
    known to be zero, never computed): {path: T_θx ẋ} at every layer with parameters
    after it, and the tangent at the output."""
    rows = {}
    for i, layer in enumerate(layers):
        here, p, state, dy = path + (i,), params[i], states[i], dys[i]
        if isinstance(layer, Residual):
            inner_dys = stack_backward(layer.layers, p, state, dy)[2]
            branch, inner = _mixed_rows(layer.layers, p, state, inner_dys, start, pdot,
                                        xdot, here)
            rows.update(inner)
            xdot = branch if xdot is None else (xdot if branch is None else xdot + branch)
        elif here == start:
            xdot = layer.tangent(p, state, jnp.zeros_like(state) if xdot is None else xdot,
                                 pdot)
        elif xdot is not None:
            if layer.has_params:
                rows[here] = layer.mixed(p, state, dy, xdot)
            xdot = layer.tangent_x(p, state, xdot)
    return xdot, rows


def _paths(layers, params, path=()):
    """(path, layer, params) of every layer with parameters, in ravel order."""
    out = []
    for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
        if isinstance(layer, Residual):
            out += _paths(layer.layers, p, path + (i,))
        elif layer.has_params:
            out.append((path + (i,), layer, p))
    return out


def _piecewise_linear_hessian(net, params, x, y, loss):
    """H = G + A + Aᵀ for a stack with T_xx = T_θθ = 0 (module doc): G the Gauss-Newton
    Gram, A[j, i] = Σₙ T_θx ẋ at layer(i) along the unit tangent of θ_j, layer(i) after
    layer(j) — one tangent pass from layer(j) up per parameter, no backward pass."""
    loss_, z, states, _, dys = _first_order(net, params, x, y, loss)
    paths = _paths(tuple(net), params)
    sizes = [sum(int(np.size(a)) for a in leaves(p)) for _, _, p in paths]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    dtype = jnp.result_type(x)
    blocks = []
    for k, (path, _, p) in enumerate(paths):
        def column(j, path=path, p=p, k=k):
            pdot = _unravel(p, (jnp.arange(sizes[k]) == j).astype(dtype))
            rows = _mixed_rows(tuple(net), params, states, dys, path, pdot)[1]
            parts = [jnp.zeros((offsets[k + 1],), dtype)]
            parts += [jnp.concatenate([a.ravel() for a in leaves(rows[q])])
                      for q, _, _ in paths[k + 1:]]
            return jnp.concatenate(parts)
        blocks.append(lax.map(column, jnp.arange(sizes[k]), batch_size=min(sizes[k], 64)))
    a = jnp.concatenate(blocks, axis=0)
    return gauss_newton(net, params, x, y, loss=loss_) + a + a.T


def hessian(net: Net, params: Params, x: ArrayLike, y: ArrayLike, *,
            loss: _losses.LossLike) -> Array:
    """The exact Hessian (P, P) in ravel_pytree order. Arguments as ``hessian_diagonal``.

    A stack of piecewise-linear layers (Linear, Conv2d, relu and leaky_relu, the pools,
    Flatten, GlobalAvgPool, MeanOverTime, Residual of these) has no T_xx and no T_θθ, so
    H = G + A + Aᵀ: the Gauss-Newton Gram and the mixed terms, A from one tangent pass
    per parameter, from its layer up (module doc). Any other stack: ``hvp`` along each
    unit vector (H is symmetric, so its rows are its columns)."""
    check(net, params, x)
    if all(layer.piecewise_linear for layer in net):
        return _piecewise_linear_hessian(net, params, x, y, loss)
    size = sum(int(np.size(a)) for a in leaves(params))
    dtype = jnp.result_type(x)

    def row(j):
        e = (jnp.arange(size) == j).astype(dtype)
        return jnp.concatenate([a.ravel() for a in leaves(
            hvp(net, params, x, y, _unravel(params, e), loss=loss))])

    return lax.map(row, jnp.arange(size), batch_size=min(size, 64))
