"""The layers of manual.network, each with its first- and second-order rules, by hand.

Every layer is y = F(x, θ) on a batch, x (N, ...). Besides its forward, a layer supplies
(all per sample n, δ = ∂E/∂y the first-order costate at its output, Ω the second-order
costate ∂²E/∂y∂y there):

    backward          (δ J_x, δ J_θ) summed over the batch: the first-order rule
    pullback          columns c (N, K, *y) -> (c J_x, c J_θ), the latter per column:
                      J_xᵀ applied to K columns per sample, and each column's own
                      parameter gradient (no sum)
    second_order      T_xx = Σ_k δ_k ∇²_x y_k, factored as Σ_j w_j c_j c_jᵀ (columns
                      (N, K, *x), weights (N, K)); None where F is linear in x (Linear,
                      Conv2d, the pools, Flatten, GlobalAvgPool, MeanOverTime) or has
                      zero curvature almost everywhere (relu, leaky_relu, max pooling)
    pull_diagonal     a diagonal part diag(s) of Ω_y (s (N, *y)) carried to x: (s_x, columns)
                      with Jᵀ diag(s) J = diag(s_x) + Σ w c cᵀ (either may be None);
                      None for a layer that does not carry one (its s becomes columns)
    diagonal_from     Σₙ diag(J_θᵀ diag(s) J_θ), the parameters' share of that part
    second_order_diagonal   T_xx when it is diagonal (Act): its s, or None
    pull_blocks       for a layer that keeps channels apart (Act, the pools): the
                      channel blocks B (N, C, L, L) of Ω_y (L = H W) carried to x
    block_diagonal    Conv2d: Σₙ diag(J_θᵀ Ω_y J_θ) from Ω_y's channel blocks alone
    piecewise_linear  True where T_xx = T_θθ = 0 almost everywhere (linear in x and in θ
                      apart, relu's kinks aside): a stack of these has only the mixed terms
    mixed             Linear, Conv2d: T_θx ẋ = ∂/∂ẋ (δ J_θ) ẋ, the parameter gradient with
                      the input's tangent ẋ in place of x (the mixed term along ẋ)
    own_diagonal      diag T_θθ, T_θθ = Σ_k δ_k ∇²_θ y_k; None where F is linear in θ
    own_block         T_θθ as a (P_l, P_l) matrix (ravel order); None likewise
    tangent           ẏ = J_x ẋ + J_θ θ̇ (the forward R-op)
    backward_tangent  the R-op of ``backward``: the derivative of (δ J_x, δ J_θ) along
                      (ẋ, θ̇, δ̇) — Pearlmutter's second pass

With these, the costate recursion of manual.network is Mizutani and Dreyfus's for any
stack: Ω_x = J_xᵀ Ω_y J_x + T_xx, the parameter block H_θθ = J_θᵀ Ω_y J_θ + T_θθ.

Residual(*layers) is y = x + f(x): δ_x = δ + δ J_f and, for every column c of Ω_y,
c_x = c + c J_f — the two branches carry the same column, so Ω_x = (I + J_f)ᵀ Ω_y
(I + J_f) + T_f keeps the cross terms J_fᵀ Ω_y + Ω_y J_f (``join_columns``).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax, random

from manual import activations as _activations
from manual import attention, conv, im2col, layernorm, pool, windows
from manual._factor import signed_columns
from manual.types import Array

__all__ = ["Act", "AvgPool2d", "Conv2d", "Flatten", "GlobalAvgPool", "Layer", "LayerNorm",
           "Linear", "MaxPool2d", "MeanOverTime", "Residual", "SelfAttention", "describe",
           "stack_backward", "stack_backward_tangent", "stack_check", "stack_forward",
           "stack_init", "stack_tangent"]


def describe(x: object) -> str:
    """A parameter entry, as an error message shows it."""
    if hasattr(x, "shape"):
        return f"array of shape {tuple(np.shape(x))} and dtype {jnp.result_type(x)}"
    if isinstance(x, dict):
        return "dict with keys " + str(sorted(x))
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of {len(x)}: (" + ", ".join(describe(v) for v in x) + ")"
    return repr(x)


def _error(where, message):
    return ValueError(f"layer {where}: {message}")


def _array(where, name, a, dtype, rank):
    if not hasattr(a, "shape") or not jnp.issubdtype(jnp.result_type(a), jnp.floating):
        raise _error(where, f"{name} must be a floating-point array, got {describe(a)}")
    if jnp.result_type(a) != dtype:
        raise _error(where, f"{name} must have the dtype of x ({dtype}), got {describe(a)}")
    if np.ndim(a) != rank:
        raise _error(where, f"{name} must have rank {rank}, got {describe(a)}")


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return tuple(_tree_map(fn, v) for v in tree)
    return fn(tree)


def _last(v, ndim):
    """(D,) -> (1, ..., 1, D): explicit broadcasting over ``ndim - 1`` leading axes."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _columns(c):
    """(N, K, ...) -> (N·K, ...)."""
    return c.reshape((c.shape[0] * c.shape[1],) + c.shape[2:])


def _split(a, n):
    """(N·K, ...) -> (N, K, ...)."""
    return a.reshape((n, a.shape[0] // n) + a.shape[1:])


def _repeat(x, k):
    """x (N, ...) repeated for K columns: (N·K, ...), sample n's copies adjacent."""
    return jnp.broadcast_to(x[:, None], (x.shape[0], k) + x.shape[1:]).reshape(
        (x.shape[0] * k,) + x.shape[1:])


class Layer:
    """The protocol (module docstring); the defaults are those of a parameterless layer
    that is linear in x."""

    has_params = False
    piecewise_linear = True

    def check(self, p, shape: tuple, dtype, where: str) -> tuple:
        """Validate params p against an input of ``shape``; the output shape."""
        if not (isinstance(p, tuple) and len(p) == 0):
            raise _error(where, f"{type(self).__name__} has no parameters: its entry must "
                                f"be (), got {describe(p)}")
        return self.out_shape(shape, where)

    def out_shape(self, shape: tuple, where: str) -> tuple:
        return shape

    def init(self, key, shape: tuple, size, dtype) -> tuple:
        return ()

    def second_order(self, p, state, dy):
        return None

    def second_order_diagonal(self, p, state, dy):
        return None

    def pull_diagonal(self, p, state, s):
        return None

    def column_diagonal(self, p, state, c, g, w):
        """Σₙ Σ_k w_k g_k² over the columns' parameter gradients g (leaves (N, K, ...))."""
        return _tree_map(lambda a: jnp.einsum("nk,nk...->...", w, a * a), g)

    def own_diagonal(self, p, state, dy):
        return None

    def own_block(self, p, state, dy):
        return None

    def tangent_x(self, p, state, xdot):
        """J_x ẋ, the tangent with θ̇ = 0."""
        return self.tangent(p, state, xdot, _tree_map(jnp.zeros_like, p))

    def backward_tangent(self, p, state, dy, xdot, pdot, dydot):
        """For a layer linear in x with no parameters: (δ̇ J_x, ())."""
        return self.backward(p, state, dydot)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """y = x W + b over the last axis: params (w (D, M), b (M,)); x (N, ..., D).

    First order: δ_x = δ Wᵀ, ∂E/∂W = Σ xᵀ δ, ∂E/∂b = Σ δ (manual.linear).
    Second order: y is linear in x and in θ, so T_xx = T_θθ = 0; the mixed term
    ∂²(δ·y)/∂x_d∂W_dm = δ_m couples W with the layers below (an off-diagonal block only).
    Ω_x = W Ω_y Wᵀ per row; a column c (N, K, ..., M) maps to c Wᵀ and to its own
    gradient Σ_rows xᵀ c: 2 N K P_l flops per column set.
    """

    has_params = True

    def check(self, p, shape, dtype, where):
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise _error(where, f"Linear params must be a (w, b) pair, got {describe(p)}")
        w, b = p
        _array(where, "w", w, dtype, 2)
        _array(where, "b", b, dtype, 1)
        if w.shape[0] != shape[-1] or b.shape != (w.shape[1],):
            raise _error(where, f"Linear expects w (D, M) with D = {shape[-1]} (input "
                                f"{shape}) and b (M,), got w {w.shape} and b {b.shape}")
        return shape[:-1] + (w.shape[1],)

    def init(self, key, shape, size, dtype):
        m = int(size)
        w = random.normal(key, (shape[-1], m), dtype) / float(np.sqrt(shape[-1]))
        return (w, jnp.zeros((m,), dtype))

    def forward(self, p, x):
        w, b = p
        return x @ w + _last(b, x.ndim), x

    def backward(self, p, x, dy):
        w, _ = p
        rows = tuple(range(dy.ndim - 1))
        return dy @ w.T, (jnp.tensordot(x, dy, axes=(rows, rows)), dy.sum(axis=rows))

    def pullback(self, p, x, c):
        w, _ = p
        gw = jnp.einsum("n...d,nk...m->nkdm", x, c)
        gb = c.sum(axis=tuple(range(2, c.ndim - 1)))
        return c @ w.T, (gw, gb)

    def column_diagonal(self, p, x, c, g, w):
        """Σ w g² without the per-column gradients: per sample and output m,
        Ω_m[t, u] = Σ_k w_k c_k[t, m] c_k[u, m] over the rows t, u, then
        diag W[d, m] = Σₙ Σ_{t,u} x[t, d] x[u, d] Ω_m[t, u] (one row: (x²)ᵀ Σ_k w c²)."""
        n, k, m = c.shape[0], c.shape[1], c.shape[-1]
        c3 = c.reshape(n, k, -1, m)
        x3 = x.reshape(n, -1, x.shape[-1])
        if c3.shape[2] == 1:
            omega = jnp.einsum("nk,nkm->nm", w, c3[:, :, 0] ** 2)   # diag Ω per sample
            dw = jnp.einsum("nd,nm->dm", x3[:, 0] ** 2, omega)
        else:
            omega = jnp.einsum("nktm,nk,nkum->nmtu", c3, w, c3)
            dw = jnp.einsum("ntd,nud,nmtu->dm", x3, x3, omega)
        cb = c3.sum(axis=2)
        return (dw, jnp.einsum("nk,nkm->m", w, cb * cb))

    def tangent_x(self, p, x, xdot):
        return xdot @ p[0]

    def mixed(self, p, x, dy, xdot):
        """∂²(δ·y)/∂W∂x along ẋ: Σ ẋᵀ δ (b: 0)."""
        rows = tuple(range(dy.ndim - 1))
        return jnp.tensordot(xdot, dy, axes=(rows, rows)), jnp.zeros_like(p[1])

    def diagonal_from(self, p, x, s):
        """diag(s) at y: ∂y[r, m]/∂W[d, m] = x[r, d], so diag W = Σ x² s, diag b = Σ s."""
        rows = tuple(range(s.ndim - 1))
        return jnp.tensordot(x * x, s, axes=(rows, rows)), s.sum(axis=rows)

    def pull_diagonal(self, p, x, s):
        """W diag(s_r) Wᵀ on each row r: M shared columns W[:, m] per row (weights s),
        or, when M > 2D, the D x D blocks formed and written as 2D signed columns."""
        w, _ = p
        n, (d, m) = s.shape[0], w.shape
        rows = int(np.prod(s.shape[1:-1]))
        if m > 2 * d:
            blocks = jnp.einsum("dm,nrm,em->nrde", w, s.reshape(n, rows, m), w)
            eye = jnp.eye(rows, dtype=w.dtype)
            omega = jnp.einsum("rs,nrde->nrdse", eye, blocks).reshape(n, rows * d, rows * d)
            c, weights = signed_columns(omega)
            return None, (c.reshape((n, -1) + x.shape[1:]), weights)
        eye = jnp.eye(rows, dtype=w.dtype)
        shared = jnp.einsum("rs,dm->rmsd", eye, w).reshape((1, rows * m) + x.shape[1:])
        return None, (jnp.broadcast_to(shared, (n,) + shared.shape[1:]),
                      s.reshape(n, rows * m))

    def tangent(self, p, x, xdot, pdot):
        (w, _), (vw, vb) = p, pdot
        return xdot @ w + x @ vw + _last(vb, x.ndim)

    def backward_tangent(self, p, x, dy, xdot, pdot, dydot):
        (w, _), (vw, _) = p, pdot
        rows = tuple(range(dy.ndim - 1))
        dw = jnp.tensordot(xdot, dy, axes=(rows, rows)) + jnp.tensordot(x, dydot,
                                                                       axes=(rows, rows))
        return dydot @ w.T + dy @ vw.T, (dw, dydot.sum(axis=rows))


class Conv2d(Layer):
    """y = x ⋆ W + b, NCHW: params (w (O, C/groups, kh, kw), b (O,)), as manual.conv.

    First order: manual.conv's dX (the transposed, flipped-kernel correlation) and dW.
    Second order: linear in x and in θ (T_xx = T_θθ = 0). A column c (N, K, O, Ho, Wo)
    maps to dX(c) (one input-gradient convolution over N·K images) and to its own
    gradient dW[n,k,o,c,a,β] = Σ_{i,j} c[n,k,o,i,j] X̃[n, c, i s + a d, j s + β d], the
    im2col patches contracted with the column: 2 N K P_l Ho Wo / (C_g kh kw) ... i.e.
    2 N K O Ho Wo C_g kh kw flops.
    """

    has_params = True

    def __init__(self, *, stride=1, padding=0, dilation=1, groups=1):
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def __repr__(self):
        return "Conv2d(" + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")"

    def check(self, p, shape, dtype, where):
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise _error(where, f"Conv2d params must be a (w, b) pair, got {describe(p)}")
        if len(shape) != 4:
            raise _error(where, f"Conv2d expects input (N, C, H, W), got shape {shape}")
        w, b = p
        _array(where, "w", w, dtype, 4)
        _array(where, "b", b, dtype, 1)
        try:
            g = conv.geometry(jnp.zeros(shape, dtype), w, b, **self.options)
        except ValueError as e:
            raise _error(where, f"Conv2d: {e}") from None
        return (shape[0], w.shape[0]) + g.out

    def init(self, key, shape, size, dtype):
        out_channels, kernel = size
        kh, kw = windows.int_pair("kernel", kernel, minimum=1)
        c_g = shape[1] // self.options["groups"]
        w = random.normal(key, (out_channels, c_g, kh, kw), dtype) / float(np.sqrt(c_g * kh * kw))
        return (w, jnp.zeros((out_channels,), dtype))

    def geometry(self, x, w, b):
        return conv.geometry(x, w, b, **self.options)

    def forward(self, p, x):
        w, b = p
        return conv.conv2d(x, w, b, **self.options), x

    def backward(self, p, x, dy):
        dx, dw, db = conv.conv2d_backward(x, *p, dy, **self.options)
        return dx, (dw, db)

    def pullback(self, p, x, c):
        w, b = p
        g = self.geometry(x, w, b)
        n, k = c.shape[:2]
        o, c_g, kh, kw = w.shape
        cx = _split(conv.input_gradient(_columns(c), w, g), n)
        patches = im2col.im2col(x, g)                     # (G, C_g kh kw, N L)
        patches = patches.reshape(g.groups, c_g * kh * kw, n, -1).transpose(2, 0, 1, 3)
        cg = c.reshape(n, k, g.groups, o // g.groups, -1)  # (N, K, G, O_g, L)
        gw = jnp.einsum("nkgol,ngcl->nkgoc", cg, patches, precision=conv.HIGHEST)
        return cx, (gw.reshape(n, k, o, c_g, kh, kw), c.sum(axis=(3, 4)))

    def diagonal_from(self, p, x, s):
        """diag(s) at y: ∂y[o, i, j]/∂W[o, c, a, β] = X̃[c, i s + a d, j s + β d], so
        diag W is the weight gradient of X̃² against s, diag b = Σ s."""
        g = self.geometry(x, *p)
        return conv.weight_gradient(x * x, s, g), s.sum(axis=(0, 2, 3))

    def tangent_x(self, p, x, xdot):
        return conv.correlate(xdot, p[0], self.geometry(x, *p))

    def mixed(self, p, x, dy, xdot):
        """∂²(δ·y)/∂W∂x along ẋ: the weight gradient of ẋ against δ (b: 0)."""
        g = self.geometry(x, *p)
        return conv.weight_gradient(xdot, dy, g), jnp.zeros_like(p[1])

    def block_diagonal(self, p, x, b):
        """From Ω_y's channel blocks B (N, O, L, L): ∂y[o, l]/∂W[o, c, a, β] = P[c a β, l]
        (the im2col patches), so diag W[o, i] = Σₙ Σ_{l,m} P[i, l] B[o, l, m] P[i, m],
        and diag b[o] = Σₙ Σ_{l,m} B[o, l, m]: N O L² C_g kh kw flops, no column."""
        w, bias = p
        g = self.geometry(x, w, bias)
        n, (o, c_g, kh, kw) = x.shape[0], w.shape
        patches = im2col.im2col(x, g).reshape(g.groups, c_g * kh * kw, n, -1)
        bg = b.reshape(n, g.groups, o // g.groups, b.shape[-2], b.shape[-1])
        dw = jnp.einsum("ginl,ngolm,ginm->goi", patches, bg, patches,
                        precision=conv.HIGHEST)
        return dw.reshape(w.shape), b.sum(axis=(0, 2, 3))

    def pull_diagonal(self, p, x, s):
        """J_xᵀ diag(s) J_x with J_x the same for every sample: the U = O Ho Wo unit
        images pulled back once (shared columns, weights s), or, when U > 2 C H W, the
        per-sample C H W square formed from them and written as signed columns."""
        w, b = p
        g = self.geometry(x, w, b)
        n, units = s.shape[0], int(np.prod(s.shape[1:]))
        eye = jnp.eye(units, dtype=x.dtype).reshape((units,) + s.shape[1:])
        shared = conv.input_gradient(eye, w, g)               # (U, C, H, W)
        f = int(np.prod(x.shape[1:]))
        if units > 2 * f:
            r = shared.reshape(units, f)
            c, weights = signed_columns(jnp.einsum("ui,nu,uj->nij", r, s.reshape(n, units), r))
            return None, (c.reshape((n, 2 * f) + x.shape[1:]), weights)
        return None, (jnp.broadcast_to(shared[None], (n,) + shared.shape),
                      s.reshape(n, units))

    def tangent(self, p, x, xdot, pdot):
        (w, b), (vw, vb) = p, pdot
        g = self.geometry(x, w, b)
        return conv.correlate(xdot, w, g) + conv.correlate(x, vw, g) + vb[None, :, None, None]

    def backward_tangent(self, p, x, dy, xdot, pdot, dydot):
        (w, b), (vw, _) = p, pdot
        g = self.geometry(x, w, b)
        dx = conv.input_gradient(dydot, w, g) + conv.input_gradient(dy, vw, g)
        dw = conv.weight_gradient(xdot, dy, g) + conv.weight_gradient(x, dydot, g)
        return dx, (dw, dydot.sum(axis=(0, 2, 3)))


_FLAT = (_activations.relu, _activations.leaky_relu)  # f'' = 0 almost everywhere


class Act(Layer):
    """a = f(z) elementwise; ``activation`` a name or a manual.activations.Activation.

    First order: δ_z = f'(z) ⊙ δ. Second order: ∂²(δ·a)/∂z² = diag(δ ⊙ f''(z)), so
    Ω_z = D Ω_a D + diag(δ ⊙ f''(z)), D = diag f'(z). The diagonal term is factored
    as U one-hot columns e_u (U the units per sample) with weights δ_u f''(z_u): exact,
    and it grows the costate by U columns (skipped for relu and leaky_relu, whose
    f'' is 0 away from the kink).
    """

    def __init__(self, activation):
        self.activation = _activations.get(activation)
        self.piecewise_linear = self.activation in _FLAT

    def __repr__(self):
        return f"Act({self.activation!r})"

    def forward(self, p, z):
        a = self.activation.f(z)
        return a, (z, a)

    def slope(self, state):
        z, a = state
        return self.activation.df_from(z, a)

    def backward(self, p, state, dy):
        return dy * self.slope(state), ()

    def pullback(self, p, state, c):
        return c * self.slope(state)[:, None], ()

    def tangent(self, p, state, xdot, pdot):
        return self.slope(state) * xdot

    def pull_diagonal(self, p, state, s):
        """D diag(s) D = diag(f'² s): a diagonal stays diagonal."""
        return s * self.slope(state) ** 2, None

    def pull_blocks(self, p, state, b):
        """D B D per channel block: B[c, i, j] f'_ci f'_cj."""
        slope = self.slope(state)
        slope = slope.reshape(slope.shape[:2] + (-1,))
        return b * slope[..., :, None] * slope[..., None, :]

    def second_order_diagonal(self, p, state, dy):
        """T_xx = diag(δ ⊙ f''(z)) kept as a diagonal (None for relu, leaky_relu)."""
        if self.activation in _FLAT:
            return None
        z, a = state
        return dy * self.activation.d2f_from(z, a)

    def backward_tangent(self, p, state, dy, xdot, pdot, dydot):
        z, a = state
        return self.activation.d2f_from(z, a) * xdot * dy + self.slope(state) * dydot, ()

    def second_order(self, p, state, dy):
        if self.activation in _FLAT:
            return None
        z, a = state
        n, units = z.shape[0], int(np.prod(z.shape[1:]))
        weights = (dy * self.activation.d2f_from(z, a)).reshape(n, units)
        eye = jnp.eye(units, dtype=z.dtype).reshape((1, units) + z.shape[1:])
        return jnp.broadcast_to(eye, (n, units) + z.shape[1:]), weights


class _Pool(Layer):

    def __init__(self, window, *, stride=None, padding=0):
        self.options = dict(window=window, stride=stride, padding=padding)

    def __repr__(self):
        return (f"{type(self).__name__}({self.options['window']!r}, stride="
                f"{self.options['stride']!r}, padding={self.options['padding']!r})")

    def out_shape(self, shape, where):
        if len(shape) != 4:
            raise _error(where, f"{type(self).__name__} expects input (N, C, H, W), got "
                                f"shape {shape}")
        try:
            g = pool.pool_geometry(jnp.zeros(shape[1:], jnp.float32), **self.options)
        except ValueError as e:
            raise _error(where, f"{type(self).__name__}: {e}") from None
        return shape[:2] + g.out

    def pullback(self, p, x, c):
        dx = self.backward(p, _repeat(x, c.shape[1]), _columns(c))[0]
        return _split(dx, c.shape[0]), ()

    def pull_blocks(self, p, x, b):
        """Sᵀ B S per channel, S[n, c, q, i] = ∂y[n, c, q]/∂x[n, c, i] (a pool never mixes
        channels): S from the backward of the Q = Ho Wo unit images, every channel at once."""
        n, ch = x.shape[:2]
        out = self.out_shape(x.shape, "")[2:]
        q = int(np.prod(out))
        eye = jnp.broadcast_to(jnp.eye(q, dtype=x.dtype).reshape(q, 1, 1, *out),
                               (q, n, ch) + out).reshape((q * n, ch) + out)
        xs = jnp.broadcast_to(x[None], (q,) + x.shape).reshape((q * n,) + x.shape[1:])
        jac = self.backward(p, xs, eye)[0].reshape(q, n, ch, -1).transpose(1, 2, 0, 3)
        return jnp.einsum("ncqi,ncqr,ncrj->ncij", jac, b, jac)


class MaxPool2d(_Pool):
    """y = the max of each window of x (padded with -inf), as manual.pool.

    First order: δ routed to each window's first argmax. Second order: locally the
    identity on the argmax, so T_xx = 0 almost everywhere (random inputs have no ties);
    the tangent is ẋ at the argmax, Ω_x = Jᵀ Ω_y J a scatter of Ω_y's rows and columns.
    """

    def forward(self, p, x):
        return pool.max_pool2d(x, **self.options), x

    def backward(self, p, x, dy):
        return pool.max_pool2d_backward(x, dy, **self.options), ()

    def pull_diagonal(self, p, x, s):
        """J routes each output to its input argmax a(u), so Jᵀ diag(s) J = Σ_u s_u
        e_a(u) e_a(u)ᵀ is diagonal: s routed like δ."""
        return self.backward(p, x, s)[0], None

    def tangent(self, p, x, xdot, pdot):
        g = pool.pool_geometry(x, **self.options)
        pads = ((0, 0), (0, 0)) + g.pads
        taps = windows.windows(jnp.pad(x, pads, constant_values=-np.inf), g.window,
                               g.stride, g.dilation, g.out)
        dots = windows.windows(jnp.pad(xdot, pads), g.window, g.stride, g.dilation, g.out)
        best, picked = taps[0], dots[0]
        for tap, dot in zip(taps[1:], dots[1:], strict=True):
            better = tap > best  # the first argmax: a later tap wins only when greater
            best, picked = jnp.where(better, tap, best), jnp.where(better, dot, picked)
        return picked


class AvgPool2d(_Pool):
    """y = the mean of each window of x (zero-padded, the padding counted), as
    manual.pool. Linear in x: T_xx = 0, Ω_x = Jᵀ Ω_y J with J the window mean."""

    def forward(self, p, x):
        return pool.avg_pool2d(x, **self.options), x

    def backward(self, p, x, dy):
        return pool.avg_pool2d_backward(x, dy, **self.options), ()

    def tangent(self, p, x, xdot, pdot):
        return pool.avg_pool2d(xdot, **self.options)


class Flatten(Layer):
    """(N, ...) -> (N, -1) in C order; a reshape, so Ω_x is Ω_y reshaped."""

    def out_shape(self, shape, where):
        return (shape[0], int(np.prod(shape[1:])))

    def forward(self, p, x):
        return x.reshape(x.shape[0], -1), x.shape

    def backward(self, p, shape, dy):
        return dy.reshape(shape), ()

    def pullback(self, p, shape, c):
        return c.reshape(c.shape[:2] + shape[1:]), ()

    def pull_diagonal(self, p, shape, s):
        return s.reshape(shape), None

    def tangent(self, p, shape, xdot, pdot):
        return xdot.reshape(xdot.shape[0], -1)


class GlobalAvgPool(Layer):
    """(N, C, H, W) -> (N, C), the mean over H and W: δ_x = δ / (H W) on every pixel."""

    def out_shape(self, shape, where):
        if len(shape) != 4:
            raise _error(where, f"GlobalAvgPool expects input (N, C, H, W), got shape "
                                f"{shape}")
        return shape[:2]

    def forward(self, p, x):
        return x.mean(axis=(2, 3)), x.shape

    def backward(self, p, shape, dy):
        return jnp.broadcast_to(dy[:, :, None, None], shape) / (shape[2] * shape[3]), ()

    def pullback(self, p, shape, c):
        full = c.shape[:2] + shape[1:]
        return jnp.broadcast_to(c[..., None, None], full) / (shape[2] * shape[3]), ()

    def tangent(self, p, shape, xdot, pdot):
        return xdot.mean(axis=(2, 3))


class MeanOverTime(Layer):
    """(N, T, D) -> (N, D), the mean over T: δ_x = δ / T at every step."""

    def out_shape(self, shape, where):
        if len(shape) != 3:
            raise _error(where, f"MeanOverTime expects input (N, T, D), got shape {shape}")
        return (shape[0], shape[2])

    def forward(self, p, x):
        return x.mean(axis=1), x.shape

    def backward(self, p, shape, dy):
        return jnp.broadcast_to(dy[:, None], shape) / shape[1], ()

    def pullback(self, p, shape, c):
        full = c.shape[:2] + shape[1:]
        return jnp.broadcast_to(c[:, :, None], full) / shape[1], ()

    def tangent(self, p, shape, xdot, pdot):
        return xdot.mean(axis=1)


class LayerNorm(Layer):
    """y = γ ⊙ x̂ + β over the last axis, x̂ = (x - μ)/σ, σ = sqrt(var + eps); params
    (gamma (D,), beta (D,)), as manual.layernorm.

    First order (manual.layernorm): with g = γ ⊙ δ, δ_x = (g - mean g - x̂ mean(g x̂))/σ.

    Second order, per row. φ = δ·y = g·c/σ with c = P x the centred row, P = I - 11ᵀ/D.
    ∂σ/∂x = c/(D σ), ∂(1/σ)/∂x = -c/(D σ³), ∂²(1/σ)/∂x² = -P/(D σ³) + 3 c cᵀ/(D² σ⁵),
    and g·c is linear in x with gradient u = P g. So, with s = g·x̂,

        T_xx = 1/(D σ²) [ -(u x̂ᵀ + x̂ uᵀ) - s P + 3 s/D x̂ x̂ᵀ ]

    dense per row (D x D). Factored exactly into D + 4 columns per row: u ± x̂ with
    weights ∓1/(2 D σ²) (u x̂ᵀ + x̂ uᵀ = ½[(u + x̂)(u + x̂)ᵀ - (u - x̂)(u - x̂)ᵀ]), x̂ with
    3 s/(D² σ²), the ones vector with s/(D² σ²) and the D unit vectors with -s/(D σ²):
    T (D + 4) columns per sample of T rows. y is linear in (γ, β): T_θθ = 0.
    """

    has_params = True
    piecewise_linear = False

    def __init__(self, *, eps=1e-5):
        self.eps = eps

    def __repr__(self):
        return f"LayerNorm(eps={self.eps!r})"

    def check(self, p, shape, dtype, where):
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise _error(where, f"LayerNorm params must be a (gamma, beta) pair, got "
                                f"{describe(p)}")
        for name, a in zip(("gamma", "beta"), p, strict=True):
            _array(where, name, a, dtype, 1)
            if a.shape != (shape[-1],):
                raise _error(where, f"LayerNorm {name} must have shape ({shape[-1]},) for "
                                    f"input {shape}, got {a.shape}")
        return shape

    def init(self, key, shape, size, dtype):
        return (jnp.ones((shape[-1],), dtype), jnp.zeros((shape[-1],), dtype))

    def forward(self, p, x):
        gamma, beta = p
        xc = x - x.mean(axis=-1, keepdims=True)
        rstd = lax.rsqrt((xc * xc).mean(axis=-1, keepdims=True) + self.eps)
        return layernorm.forward(x, gamma, beta, eps=self.eps), (x, xc * rstd, rstd)

    def backward(self, p, state, dy):
        dx, dgamma, dbeta = layernorm.backward(state[0], *p, dy, eps=self.eps)
        return dx, (dgamma, dbeta)

    def pullback(self, p, state, c):
        x, xhat, _ = state
        k = c.shape[1]
        dx = layernorm.backward(_repeat(x, k), *p, _columns(c), eps=self.eps)[0]
        rows = tuple(range(2, c.ndim - 1))
        return _split(dx, c.shape[0]), ((c * xhat[:, None]).sum(axis=rows), c.sum(axis=rows))

    def _xhat_tangent(self, state, xdot):
        _, xhat, rstd = state
        return rstd * (xdot - xdot.mean(axis=-1, keepdims=True)
                       - xhat * (xhat * xdot).mean(axis=-1, keepdims=True))

    def tangent(self, p, state, xdot, pdot):
        (gamma, _), (vg, vb) = p, pdot
        n = xdot.ndim
        return (_last(vg, n) * state[1] + _last(vb, n)
                + _last(gamma, n) * self._xhat_tangent(state, xdot))

    def backward_tangent(self, p, state, dy, xdot, pdot, dydot):
        (gamma, _), (vg, _) = p, pdot
        _, xhat, rstd = state
        rows = tuple(range(dy.ndim - 1))
        xhat_dot = self._xhat_tangent(state, xdot)
        rstd_dot = -rstd * (xhat * xdot).mean(axis=-1, keepdims=True) * rstd  # d(1/σ)
        gamma, vg = _last(gamma, dy.ndim), _last(vg, dy.ndim)
        g, g_dot = gamma * dy, vg * dy + gamma * dydot
        gx = (g * xhat).mean(axis=-1, keepdims=True)
        h = g - g.mean(axis=-1, keepdims=True) - xhat * gx
        h_dot = (g_dot - g_dot.mean(axis=-1, keepdims=True) - xhat_dot * gx
                 - xhat * (g_dot * xhat + g * xhat_dot).mean(axis=-1, keepdims=True))
        dx_dot = rstd_dot * h + rstd * h_dot
        return dx_dot, ((dydot * xhat + dy * xhat_dot).sum(axis=rows), dydot.sum(axis=rows))

    def second_order(self, p, state, dy):
        gamma, _ = p
        x, xhat, rstd = state
        n, d = x.shape[0], x.shape[-1]
        rows = int(np.prod(x.shape[1:-1]))
        g = (_last(gamma, dy.ndim) * dy).reshape(n, rows, d)
        xh = xhat.reshape(n, rows, d)
        r2 = (rstd * rstd).reshape(n, rows, 1)
        u = g - g.mean(axis=-1, keepdims=True)
        s = (g * xh).sum(axis=-1, keepdims=True)
        ones = jnp.ones_like(xh)
        # per row: D + 4 vectors (N, rows, D + 4, D) and their weights (N, rows, D + 4)
        vectors = jnp.concatenate(
            [jnp.stack([u + xh, u - xh, xh, ones], axis=2),
             jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (n, rows, d, d))], axis=2)
        weights = jnp.concatenate(
            [-r2 / (2 * d), r2 / (2 * d), 3 * s * r2 / d**2, s * r2 / d**2,
             jnp.broadcast_to(-s * r2 / d, (n, rows, d))], axis=2)
        # each row's vectors live in that row: columns (N, rows (D + 4), rows, D)
        place = jnp.eye(rows, dtype=x.dtype)[None, :, None, :, None]
        cols = (vectors[:, :, :, None, :] * place).reshape((n, rows * (d + 4)) + x.shape[1:])
        return cols, weights.reshape(n, rows * (d + 4))


def _dense_second_order(layer, p, state, dy, x):
    """T_xx of ``layer`` per sample from its R-op, e_j for every sample at once (T_xx is
    block-diagonal over samples), then written as signed columns (manual/_factor.py):
    2F columns per sample, F the per-sample input size."""
    n, f = x.shape[0], int(np.prod(x.shape[1:]))
    zero_p = {name: jnp.zeros_like(w) for name, w in p.items()}
    zero_dy = jnp.zeros_like(dy)

    def column(j):
        e = (jnp.arange(f) == j).astype(x.dtype).reshape(x.shape[1:])
        xdot = jnp.broadcast_to(e, x.shape)
        return layer.backward_tangent(p, state, dy, xdot, zero_p, zero_dy)[0].reshape(n, f)

    t = lax.map(column, jnp.arange(f), batch_size=min(f, 64))     # (F, N, F): T[:, n, j]
    t = t.transpose(1, 0, 2)
    c, weights = signed_columns(0.5 * (t + t.transpose(0, 2, 1)))
    return c.reshape((n, 2 * f) + x.shape[1:]), weights


class SelfAttention(Layer):
    """Multi-head self-attention, x (N, T, D): params {"w_k", "w_o", "w_q", "w_v"}, (D, D)
    each, as manual.attention.mha_forward (no biases; ``causal`` masks keys after the
    query).

    Per head, Q = x W_q, K = x W_k, V = x W_v, S = Q Kᵀ/√d, P = softmax(S), O = P V,
    y = O W_o. First order: manual.attention.mha_backward.

    R-op (tangents ẋ, Ẇ): Q̇ = ẋ W_q + x Ẇ_q (K̇, V̇ likewise), Ṡ = (Q̇ Kᵀ + Q K̇ᵀ)/√d,
    Ṗ = P ⊙ (Ṡ - rowsum(P ⊙ Ṡ)), Ȯ = Ṗ V + P V̇, ẏ = Ȯ W_o + O Ẇ_o. The backward
    dO = δ W_oᵀ, dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP - r), r = rowsum(dP ⊙ P),
    dQ = dS K/√d, dK = dSᵀ Q/√d, differentiated term by term: ḋO = δ̇ W_oᵀ + δ Ẇ_oᵀ,
    ḋV = Ṗᵀ dO + Pᵀ ḋO, ḋP = ḋO Vᵀ + dO V̇ᵀ, ḋS = Ṗ ⊙ (dP - r) + P ⊙ (ḋP - ṙ) with
    ṙ = rowsum(ḋP ⊙ P + dP ⊙ Ṗ), ḋQ = (ḋS K + dS K̇)/√d, ḋK = (ḋSᵀ Q + dSᵀ Q̇)/√d,
    ḋW_q = ẋᵀ dQ + xᵀ ḋQ (k, v likewise), ḋW_o = Ȯᵀ δ + Oᵀ δ̇,
    ḋx = Σ_{q,k,v} (ḋQ W_qᵀ + dQ Ẇ_qᵀ).

    Second order. T_xx is dense per sample (T D x T D: the softmax couples every
    position): it is formed from the R-op along the T D unit tangents (all samples at
    once) and written as 2 T D signed columns per sample (manual/_factor.py). T_θθ: along one
    entry W_q[d, e] (head h of e), Ṡ[t, r] = x[t, d] K[r, e]/√d and S is linear in W_q,
    so only the softmax curves: ∂²(δ·y)/∂W_q[d,e]² = Σ_t Ṡ_tᵀ (diag(dS_t) - dS_t P_tᵀ -
    P_t dS_tᵀ) Ṡ_t (the Hessian of Σ_s P_ts u_s in S_t, u = dP_t, is diag(g) - g pᵀ - p gᵀ
    with g = dS_t), i.e.

        diag T[W_q][d, e] = Σ_t x[t,d]² (Σ_r dS_tr K_re² - 2 (Σ_r dS_tr K_re)(Σ_r P_tr K_re))/d
        diag T[W_k][d, e] = Σ_t Q_te² (Σ_r dS_tr x_rd² - 2 (Σ_r dS_tr x_rd)(Σ_r P_tr x_rd))/d

    and 0 for W_v and W_o (y is linear in each alone). The whole T_θθ (4 D² square) for
    ``hessian_blocks`` comes from the R-op along its 4 D² unit tangents.
    """

    has_params = True
    piecewise_linear = False
    names = ("w_k", "w_o", "w_q", "w_v")  # ravel order: the keys sorted

    def __init__(self, heads, *, causal=False):
        if not windows.is_int(heads) or heads < 1:
            raise ValueError(f"SelfAttention heads must be a positive int, got {heads!r}")
        if not isinstance(causal, (bool, np.bool_)):
            raise ValueError(f"SelfAttention causal must be a bool, got {causal!r}")
        self.heads, self.causal = int(heads), bool(causal)

    def __repr__(self):
        return f"SelfAttention({self.heads}, causal={self.causal})"

    def check(self, p, shape, dtype, where):
        if not isinstance(p, dict) or set(p) != set(self.names):
            raise _error(where, f"SelfAttention params must be a dict with keys "
                                f"{list(self.names)}, got {describe(p)}")
        if len(shape) != 3:
            raise _error(where, f"SelfAttention expects input (N, T, D), got shape {shape}")
        d = shape[-1]
        for name in self.names:
            _array(where, name, p[name], dtype, 2)
            if p[name].shape != (d, d):
                raise _error(where, f"SelfAttention {name} must have shape ({d}, {d}) for "
                                    f"input {shape}, got {p[name].shape}")
        if d % self.heads:
            raise _error(where, f"SelfAttention heads={self.heads} must divide D = {d} "
                                f"(input {shape})")
        return shape

    def init(self, key, shape, size, dtype):
        d = shape[-1]
        keys = random.split(key, 4)
        return {name: random.normal(kk, (d, d), dtype) / float(np.sqrt(d))
                for name, kk in zip(self.names, keys, strict=True)}

    def _split_heads(self, z):
        b, t, d = z.shape
        return z.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)

    @staticmethod
    def _merge_heads(z):
        b, h, t, d = z.shape
        return z.transpose(0, 2, 1, 3).reshape(b, t, h * d)

    def _scale(self, x):
        # a Python float (weakly typed): a numpy float64 would promote float32 to float64
        return float(1.0 / np.sqrt(x.shape[-1] // self.heads))

    def forward(self, p, x):
        q, k, v = (self._split_heads(x @ p[w]) for w in ("w_q", "w_k", "w_v"))
        s = jnp.einsum("bhid,bhjd->bhij", q, k) * self._scale(x)
        if self.causal:
            t = x.shape[1]
            s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        e = jnp.exp(s - s.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
        o = self._merge_heads(jnp.einsum("bhij,bhjd->bhid", probs, v))
        y = attention.mha_forward(p, x, heads=self.heads, causal=self.causal)
        return y, (x, q, k, v, probs, o)

    def backward(self, p, state, dy):
        dparams, dx = attention.mha_backward(p, state[0], dy, heads=self.heads,
                                             causal=self.causal)
        return dx, dparams

    def pullback(self, p, state, c):
        x, q, k, v, _, o = state
        n, kk = c.shape[:2]
        do = self._split_heads(_columns(c) @ p["w_o"].T)
        dq, dk, dv = (_split(self._merge_heads(a), n) for a in attention.backward(
            _repeat(q, kk), _repeat(k, kk), _repeat(v, kk), do, causal=self.causal))
        grads = {"w_q": jnp.einsum("ntd,nkte->nkde", x, dq),
                 "w_k": jnp.einsum("ntd,nkte->nkde", x, dk),
                 "w_v": jnp.einsum("ntd,nkte->nkde", x, dv),
                 "w_o": jnp.einsum("ntd,nkte->nkde", o, c)}
        cx = dq @ p["w_q"].T + dk @ p["w_k"].T + dv @ p["w_v"].T
        return cx, grads

    def _state_tangent(self, p, state, xdot, pdot):
        x, q, k, v, probs, o = state
        sc = self._scale(x)
        qd, kd, vd = (self._split_heads(xdot @ p[w] + x @ pdot[w])
                      for w in ("w_q", "w_k", "w_v"))
        sd = (jnp.einsum("bhid,bhjd->bhij", qd, k)
              + jnp.einsum("bhid,bhjd->bhij", q, kd)) * sc
        pd = probs * (sd - (probs * sd).sum(axis=-1, keepdims=True))
        od = self._merge_heads(jnp.einsum("bhij,bhjd->bhid", pd, v)
                               + jnp.einsum("bhij,bhjd->bhid", probs, vd))
        return qd, kd, vd, pd, od

    def tangent(self, p, state, xdot, pdot):
        o = state[5]
        od = self._state_tangent(p, state, xdot, pdot)[4]
        return od @ p["w_o"] + o @ pdot["w_o"]

    def _scores_backward(self, p, state, dy):
        x, q, k, v, probs, o = state
        do = self._split_heads(dy @ p["w_o"].T)
        dp = jnp.einsum("bhid,bhjd->bhij", do, v)
        r = (dp * probs).sum(axis=-1, keepdims=True)
        return do, dp, r, probs * (dp - r)

    def backward_tangent(self, p, state, dy, xdot, pdot, dydot):
        x, q, k, v, probs, o = state
        sc = self._scale(x)
        qd, kd, vd, pd, od = self._state_tangent(p, state, xdot, pdot)
        do, dp, r, ds = self._scores_backward(p, state, dy)
        do_d = self._split_heads(dydot @ p["w_o"].T + dy @ pdot["w_o"].T)
        dv_d = (jnp.einsum("bhij,bhid->bhjd", pd, do) + jnp.einsum("bhij,bhid->bhjd", probs, do_d))
        dp_d = jnp.einsum("bhid,bhjd->bhij", do_d, v) + jnp.einsum("bhid,bhjd->bhij", do, vd)
        r_d = (dp_d * probs + dp * pd).sum(axis=-1, keepdims=True)
        ds_d = pd * (dp - r) + probs * (dp_d - r_d)
        dq = jnp.einsum("bhij,bhjd->bhid", ds, k) * sc
        dk = jnp.einsum("bhij,bhid->bhjd", ds, q) * sc
        dv = jnp.einsum("bhij,bhid->bhjd", probs, do)
        dq_d = (jnp.einsum("bhij,bhjd->bhid", ds_d, k) + jnp.einsum("bhij,bhjd->bhid", ds, kd)) * sc
        dk_d = (jnp.einsum("bhij,bhid->bhjd", ds_d, q) + jnp.einsum("bhij,bhid->bhjd", ds, qd)) * sc
        m = self._merge_heads
        first = {"w_q": m(dq), "w_k": m(dk), "w_v": m(dv)}
        second = {"w_q": m(dq_d), "w_k": m(dk_d), "w_v": m(dv_d)}
        rows = ((0, 1), (0, 1))
        grads = {w: (jnp.tensordot(xdot, first[w], axes=rows)
                     + jnp.tensordot(x, second[w], axes=rows)) for w in first}
        grads["w_o"] = jnp.tensordot(od, dy, axes=rows) + jnp.tensordot(o, dydot, axes=rows)
        dx = sum(second[w] @ p[w].T + first[w] @ pdot[w].T for w in first)
        return dx, grads

    def second_order(self, p, state, dy):
        return _dense_second_order(self, p, state, dy, state[0])

    def own_diagonal(self, p, state, dy):
        x, q, k, v, probs, o = state
        _, _, _, ds = self._scores_backward(p, state, dy)
        sc2 = self._scale(x) ** 2
        kh, qh = k, q                                      # (N, H, T, d)
        # W_q[d, e]: Σ_t x[t,d]² (Σ_r dS K² - 2 (Σ_r dS K)(Σ_r P K)) for e in its head
        a = (jnp.einsum("bhtr,bhre->bhte", ds, kh * kh)
             - 2 * jnp.einsum("bhtr,bhre->bhte", ds, kh) * jnp.einsum("bhtr,bhre->bhte", probs, kh))
        diag_q = jnp.einsum("btd,bte->de", x * x, self._merge_heads(a)) * sc2
        # W_k[d, e]: Σ_t Q_te² (Σ_r dS x_rd² - 2 (Σ_r dS x_rd)(Σ_r P x_rd)), per head
        qq = qh * qh                                       # (N, H, T, d)
        t1 = jnp.einsum("bhtr,brd,bhte->dhe", ds, x * x, qq)
        t2 = jnp.einsum("bhtr,brd->bhtd", ds, x)
        t3 = jnp.einsum("bhtr,brd->bhtd", probs, x)
        diag_k = (t1 - 2 * jnp.einsum("bhtd,bhte->dhe", t2 * t3, qq)) * sc2
        diag_k = diag_k.reshape(x.shape[-1], -1)
        zero = jnp.zeros_like(p["w_v"])
        return {"w_k": diag_k, "w_o": zero, "w_q": diag_q, "w_v": zero}

    def own_block(self, p, state, dy):
        x = state[0]
        d = x.shape[-1]
        size = 4 * d * d
        zero_x, zero_dy = jnp.zeros_like(x), jnp.zeros_like(dy)

        def column(j):
            e = (jnp.arange(size) == j).astype(x.dtype).reshape(4, d, d)
            pdot = {name: e[i] for i, name in enumerate(self.names)}
            g = self.backward_tangent(p, state, dy, zero_x, pdot, zero_dy)[1]
            return jnp.concatenate([g[name].ravel() for name in self.names])

        return lax.map(column, jnp.arange(size), batch_size=min(size, 64))


class Residual(Layer):
    """y = x + f(x), f the stack ``layers``; params a tuple, one entry per inner layer.

    First order: δ_x = δ + (δ through f). Second order: Ω_x = (I + J_f)ᵀ Ω_y (I + J_f)
    + T_f, where T_f is what the inner layers add. Factored, each column c of Ω_y goes
    down both branches and the two images are summed (``join_columns``), which keeps
    the cross terms J_fᵀ Ω_y + Ω_y J_f; the inner layers' own columns join after them.
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"Residual layers must be manual.network layers, got "
                                 f"{layer!r} at position {i}")
        self.layers = tuple(layers)
        self.has_params = any(layer.has_params for layer in layers)
        self.piecewise_linear = all(layer.piecewise_linear for layer in layers)

    def __repr__(self):
        return "Residual(" + ", ".join(map(repr, self.layers)) + ")"

    def check(self, p, shape, dtype, where):
        out = stack_check(self.layers, p, shape, dtype, where + ".")
        if out != shape:
            raise _error(where, f"Residual branch must keep the shape {shape}, got {out}")
        return shape

    def init(self, key, shape, size, dtype):
        return stack_init(self.layers, key, shape, size, dtype)

    def forward(self, p, x):
        y, states = stack_forward(self.layers, p, x)
        return x + y, states

    def backward(self, p, states, dy):
        dx, dp, _ = stack_backward(self.layers, p, states, dy)
        return dy + dx, dp

    def tangent(self, p, states, xdot, pdot):
        return xdot + stack_tangent(self.layers, p, states, xdot, pdot)[0]

    def backward_tangent(self, p, states, dy, xdot, pdot, dydot):
        dy_inner = stack_backward(self.layers, p, states, dy)[2]
        xdots = stack_tangent(self.layers, p, states, xdot, pdot)[1]
        dx, dp = stack_backward_tangent(self.layers, p, states, dy_inner, xdots, pdot, dydot)
        return dydot + dx, dp

    def join_columns(self, skip, branch, w_skip, w_branch):
        """The columns at x and their weights, from the skip (K columns, the ones that
        entered) and from f (those K, then the inner layers' own): the first K summed
        (one column, two paths: the cross terms), the rest after; f's weights."""
        k = skip.shape[1]
        return jnp.concatenate([skip + branch[:, :k], branch[:, k:]], axis=1), w_branch


def stack_check(layers: tuple, params: tuple, shape: tuple, dtype, prefix: str = "") -> tuple:
    """Validate ``params`` against ``layers`` for an input of ``shape``; the output shape.

    Raises ValueError naming the layer (its index, dotted into a Residual) and what it got.
    """
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        where = prefix[:-1] if prefix else "params"
        got = describe(params)
        raise ValueError(f"{'layer ' + where if prefix else where}: params must be a tuple "
                         f"with one entry per layer ({len(layers)}), got {got}")
    for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
        shape = layer.check(p, shape, dtype, f"{prefix}{i}")
    return shape


def stack_init(layers: tuple, key, shape: tuple, sizes, dtype) -> tuple:
    """Params for ``layers`` from the sizes the caller gives (one entry per layer)."""
    if not isinstance(sizes, (tuple, list)) or len(sizes) != len(layers):
        raise ValueError(f"sizes must hold one entry per layer ({len(layers)}), got {sizes!r}")
    params = []
    for layer, size, k in zip(layers, sizes, random.split(key, len(layers)), strict=True):
        p = layer.init(k, shape, size, dtype)
        params.append(p)
        shape = layer.check(p, shape, dtype, "init")
    return tuple(params)


def stack_forward(layers: tuple, params: tuple, x: Array) -> tuple:
    """The output and every layer's saved state."""
    states = []
    for layer, p in zip(layers, params, strict=True):
        x, state = layer.forward(p, x)
        states.append(state)
    return x, tuple(states)


def stack_backward(layers: tuple, params: tuple, states: tuple, dy: Array) -> tuple:
    """(δ at the input, the parameter gradients, δ at each layer's output)."""
    grads, dys = [None] * len(layers), [None] * len(layers)
    for i in reversed(range(len(layers))):
        dys[i] = dy
        dy, grads[i] = layers[i].backward(params[i], states[i], dy)
    return dy, tuple(grads), tuple(dys)


def stack_tangent(layers: tuple, params: tuple, states: tuple, xdot: Array,
                  pdot: tuple) -> tuple:
    """(ẏ at the output, ẋ at each layer's input)."""
    xdots = []
    for layer, p, state, v in zip(layers, params, states, pdot, strict=True):
        xdots.append(xdot)
        xdot = layer.tangent(p, state, xdot, v)
    return xdot, tuple(xdots)


def stack_backward_tangent(layers: tuple, params: tuple, states: tuple, dys: tuple,
                           xdots: tuple, pdot: tuple, dydot: Array) -> tuple:
    """(δ̇ at the input, the parameters' R-op gradients) given every layer's δ and ẋ."""
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        dydot, grads[i] = layers[i].backward_tangent(params[i], states[i], dys[i], xdots[i],
                                                     pdot[i], dydot)
    return dydot, tuple(grads)
