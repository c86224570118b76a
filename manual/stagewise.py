"""Second-order stagewise backprop: the exact Hessian of an MLP, its diagonal, its layer
blocks, any block of its rows, its Gauss-Newton matrix, and Hessian-vector products.

Source: E. Mizutani & S. E. Dreyfus, "On derivation of stagewise second-order
backpropagation by invariant imbedding for multi-stage neural-network learning"
(IJCNN 2006) and "Second-order stagewise backpropagation for Hessian-matrix analyses
and investigation of negative curvature" (Neural Networks 21, 2008); B. Pearlmutter,
"Fast exact multiplication by the Hessian" (Neural Computation 6, 1994) for hvp.

Set-up (manual/mlp.py; row vectors, batch first, layers l = 1..L, a_0 = x)::

    z_l = a_{l-1} W_l + b_l = â_{l-1} Ŵ_l     â = [a, 1],  Ŵ_l = [W_l; b_l]
    a_l = f_l(z_l) (l < L),  z_L = logits,  E = 1/N Σₙ ℓ(z_Lₙ, yₙ) + ½ λ Σ_l ||W_l||²

θ_l, the l-th slice of ravel_pytree(params), is W_l row-major followed by b_l, which
is exactly Ŵ_l row-major: entry (i, k) of Ŵ_l (i = n_{l-1} is the bias row) sits at
offset_l + i n_l + k. P_l = (n_{l-1} + 1) n_l. Everything below is per sample n (sums
over n are written out); D_l = diag f_l'(z_l) and M_l = D_l W_{l+1} = ∂z_{l+1}/∂z_l (rows
index z_l). Each hidden layer may have its own activation f_l (``activation=`` a
sequence, manual/activations.py); ``loss=`` may be a user's ``manual.losses.Loss``.

First-order costates (Kelley-Bryson; the gradient of the batch mean)::

    δ_L = ∂E/∂z_L = ℓ'(z_L) / N,      δ_l = f_l'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)
    ∂E/∂Ŵ_l[i, k] = Σₙ â_{l-1}[i] δ_l[k]

Second-order costates Ω_l = ∂δ_l/∂z_l = ∂²E/∂z_l∂z_l (one n_l x n_l matrix per sample).
Differentiate δ_l = D_l W_{l+1} δ_{l+1}ᵀ in z_l: z_l moves δ_{l+1} through z_{l+1}, and
moves D_l itself::

    Ω_L = ℓ''(z_L) / N
    Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag(f_l''(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ))

Diagonal blocks. â_{l-1} does not depend on θ_l, and δ_l depends on θ_l only through
z_l, with ∂z_l[q]/∂Ŵ_l[j, q] = â_{l-1}[j]::

    H_ll[(i,k), (j,q)] = Σₙ â_{l-1}[i] â_{l-1}[j] Ω_l[k, q]      = Σₙ (â âᵀ) ⊗ Ω_l

The diagonal. Setting (j, q) = (i, k)::

    H[(l,i,k), (l,i,k)] = Σₙ â_{l-1}[i]² Ω_l[k, k],   i.e.  diag H_l = (â_{l-1}²)ᵀ diag(Ω_l)

so the diagonal needs, per sample, the squares of â_{l-1} and only the diagonal of each
Ω_l: one (n_{l-1}+1, N) x (N, n_l) product per layer, 2 N P flops in all, never a block.
The recursion itself still needs the whole Ω_{l+1} to reach diag Ω_l (W Ω Wᵀ mixes
every entry), except at the first layer, whose diagonal is read off without forming
Ω_1: diag(W_2 Ω_2 W_2ᵀ)[k] = Σ_r (W_2 Ω_2)[k, r] W_2[k, r]. With widths n_0..n_L the cost
is 2N [Σ_{l=2}^{L-1} (n_l n_{l+1}² + n_l² n_{l+1}) + n_1 n_2² + n_1 n_2 + P] flops (plus
the forward pass) and N Σ n_l² numbers of memory: O(N L n³) for width n, against
O(N L² n⁴) for the whole matrix. The Gauss-Newton diagonal is the same read-out of the
Gauss-Newton Ω (below).

Off-diagonal blocks, l < m. ∂²E/∂Ŵ_l[i,k]∂Ŵ_m[j,q] = Σₙ â_{l-1}[i] Γ_lm[k, (j,q)] with
the mixed costate Γ_lm = ∂δ_l/∂θ_m = ∂²E/∂z_l∂θ_m (z_l held fixed: it does not depend
on θ_m). Write δ_l = A_lm W_m δ_mᵀ with A_lm = ∂a_{m-1}/∂z_l, which does not depend on
θ_m either. Differentiating in Ŵ_m[j, q] gives two terms: δ_m moves (its own second
costate, through z_m), and W_m itself moves (the first-order cross term, coupling δ_m
with ∂a_{m-1}/∂z_l; absent for the bias row j = n_{m-1})::

    Γ_lm[k, (j,q)] = â_{m-1}[j] Y_lm[k, q] + A_lm[k, j] δ_m[q]
    Y_lm = ∂z_m/∂z_l Ω_m

Both factors are propagated back stage by stage from l = m - 1, with one product by
M_l per stage (the invariant-imbedding recursion of the mixed costates)::

    Y_{m-1,m} = D_{m-1} W_m Ω_m,       A_{m-1,m} = D_{m-1}
    Y_lm = M_l Y_{l+1,m},              A_lm = M_l A_{l+1,m}

(Γ_ll = â_{l-1} ⊗ Ω_l: Y_ll = Ω_l, no cross term.) Every block is then a product over
the samples, H_lm = Σₙ â_{l-1}ᵀ Γ_lm, and H_ml = H_lmᵀ.

Assembly: the output is written once, in place. A tile is all P_l rows of block row l
against one input row j of Ŵ_m (n_m columns; c rows for layers narrower than 4): one
matrix product (n_{l-1}+1, N) @ (N, n_l n_m)::

    tile[(i,k), q] = Σₙ (â_{l-1}[n, i] â_{m-1}[n, j]) Y_lm[n, k, q]    (+ the cross term)

The factor â_{m-1}[j] scales the small left operand, so Γ_lm (as large as the block when
N ~ n) is never formed and Y_lm is read as it is, staying in cache from tile to tile.
The cross term A_lm[k, j] δ_m[q] is a product of its own: for adjacent layers
(A_{m-1,m} = D_{m-1}) it lives on the rows (i, k = j) alone, Σₙ â_{l-1}[n, i] f'[n, j] δ_m[n, q];
further apart (A dense) that tile's chunk of Γ is formed (N n_l n_m numbers). The tile
goes to its place in the one (P, P) buffer, and for l < m its transpose to the mirrored
place, so every off-diagonal pair is exactly transposed and nothing is computed twice; a
diagonal block is done in B column bands, each down to its own last row, the rest
mirrored: (B + 1) / 2B of its products. The bookkeeping (loops of tiles written in place,
bands, mirrors, sample chunks) is manual/_tiles.py. A diagonal block is symmetric to
rounding only (Ω_l is); symmetrising it would cost a pass over half the matrix for no
accuracy. Flops: 2 N [Σ_{l<m} P_l P_m + Σ_l (B+1)/2B P_l²], about 0.55-0.6 of the
2 N P² of all entries for two equal hidden layers.

Rows. ``hessian_rows(start, stop)`` is the same tiles restricted to the rows of θ in
[start, stop): blocks to the right (m >= l) by product with those rows of â_{l-1}ᵀ,
blocks to the left (m < l) as the transposed tiles of H_ml restricted to those columns.
It needs nothing from any other rows: a device that holds rows [r0, r1) of a row-sharded
H computes exactly its own share, ~2 N (r1 - r0) P flops, with no communication.

The L2 term adds λ to the diagonal at the weight coordinates (biases are not penalised).

Gauss-Newton, G = Σₙ Jₙᵀ (ℓ''ₙ / N) Jₙ with Jₙ = ∂z_Lₙ/∂θ: the same recursion without
the f'' term in Ω and without the cross term in Γ (those are exactly the terms that
carry δ, the residual). G includes λ I on the weight coordinates too: the penalty is
quadratic, so its Gauss-Newton matrix is its Hessian.

Memory: besides the output, N Σ_l n_l² (the Ω) and, for one column layer m at a time,
N Σ_{l<=m} n_l (2 n_m + n_{m-1}) numbers (Y and A). When that exceeds ``chunk_bytes`` the
samples are processed in equal chunks (zero-padded: a padded sample has δ_L = Ω_L = 0,
so every costate of it vanishes) by a lax.scan whose tiles add into the buffer.

hvp (Pearlmutter's R-operator, R{·} = d/dr (·)(θ + r v) at r = 0), about the cost of
one gradient::

    forward:  R{a_0} = 0,  R{z_l} = R{a_{l-1}} W_l + a_{l-1} V_l + v_{b,l},
              R{a_l} = f_l'(z_l) ⊙ R{z_l}
    backward: R{δ_L} = ℓ''(z_L) R{z_L} / N
              R{δ_l} = f_l''(z_l) ⊙ R{z_l} ⊙ (δ_{l+1} W_{l+1}ᵀ)
                       + f_l'(z_l) ⊙ (R{δ_{l+1}} W_{l+1}ᵀ + δ_{l+1} V_{l+1}ᵀ)
              (H v)_{W_l} = R{a_{l-1}}ᵀ δ_l + a_{l-1}ᵀ R{δ_l} + λ V_l
              (H v)_{b_l} = Σₙ R{δ_l}

Kinks: relu's f'' is 0 and f'(0) = 0 (manual/activations.py, as JAX); at a kink the
Hessian is that of the chosen one-sided branch.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import stagewise
    >>> params = ((jnp.ones((2, 3)) / 2, jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> h = stagewise.hessian(params, x, y, activation="tanh", loss="mse")
    >>> h.shape
    (13, 13)
    >>> (dw1, db1), (dw2, db2) = stagewise.hessian_diagonal(params, x, y, activation="tanh",
    ...                                                     loss="mse")
    >>> dw2.shape, float(db2[0])
    ((3, 1), 1.0)
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import _tiles
from manual import activations as _activations
from manual import losses as _losses
from manual import mlp as _mlp
from manual.types import Array, ArrayLike

__all__ = ["CHUNK_BYTES", "TILING", "curvature", "gauss_newton", "gauss_newton_diagonal", "hessian",
           "hessian_blocks", "hessian_diagonal", "hessian_matvec", "hessian_rows", "hvp",
           "layout"]

# Bound on one sample chunk's costates (bytes); beyond it, samples are chunked.
CHUNK_BYTES = _tiles.CHUNK_BYTES
# How the matrix is cut into tiles (manual/_tiles.py; read at each call, so a test may
# replace it).
TILING = _tiles.DEFAULT

Params = _mlp.Params
ActivationArg = _mlp.ActivationArg


def layout(params: Params) -> tuple:
    """(offsets, sizes): where each layer's slice θ_l = Ŵ_l (row-major) sits in ravel order.

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).

    Returns:
      Two tuples of Python ints, offsets and sizes P_l = (n_{l-1} + 1) n_l; P = sum(sizes).
    """
    _mlp.check_structure(params)
    widths = [params[0][0].shape[0]] + [w.shape[1] for w, _ in params]
    return _layout(widths)


def _layout(widths):
    sizes = tuple((widths[l] + 1) * widths[l + 1] for l in range(len(widths) - 1))
    offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
    return offsets, sizes


def _augment(a):
    """â = [a, 1]: the bias is the weight of a constant input."""
    return jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)


def _check(params, x, l2):
    """params (their structure first: nothing reads the layout before), x and l2 >= 0."""
    _mlp.check_params(params, x)
    _mlp.check_l2(l2)


def _has_l2(l2):
    return not (isinstance(l2, (int, float)) and l2 == 0)


class _Net:
    """One batch (or sample chunk) after the forward pass and the top costates."""

    def __init__(self, w, acts, a, z, delta_top, omega_top):
        self.w = w                  # W_l
        self.acts = acts            # the hidden layers' Activations
        self.a, self.z = a, z       # a_{l-1}, the input of layer l (a[0] = x); z_l
        self.delta_top = delta_top  # δ_L = ℓ'(z_L) / N, (N, n_L)
        self.omega_top = omega_top  # Ω_L = ℓ''(z_L) / N, (N, n_L, n_L)

    def chunk(self, a, z, delta_top, omega_top):
        """The same network on another set of samples."""
        return _Net(self.w, self.acts, a, z, delta_top, omega_top)


def _top(params, x, y, activation, loss, *, second=True):
    """Forward stages and the top costates δ_L = ℓ'/N and (with ``second``) Ω_L = ℓ''/N
    (per sample); the R-passes need only products with Ω_L (``_r_top``)."""
    a, z = _mlp.stages(params, x, activation=activation)
    fn = _losses.get(loss)
    acts = _activations.per_layer(activation, len(params) - 1)
    omega_top = fn.hessian(z[-1], y) / x.shape[0] if second else None
    return _Net([w for w, _ in params], acts, a, z, fn.grad(z[-1], y), omega_top)


class _Costates:
    def __init__(self, a_hat, df, delta, omega):
        self.a_hat = a_hat   # â_{l-1}, (N, n_{l-1} + 1)
        self.df = df         # f_l'(z_l), hidden layers
        self.delta = delta   # δ_l, (N, n_l)
        self.omega = omega   # Ω_l, (N, n_l, n_l); with ``first_diagonal`` Ω_1 is its diagonal


def _costates(net, *, f2, first_diagonal=False):
    """δ_l and Ω_l for every layer, backward from the top (see module doc)."""
    w, n_layers = net.w, len(net.w)
    df = [net.acts[l].df_from(net.z[l], net.a[l + 1]) for l in range(n_layers - 1)]
    delta, omega = [None] * n_layers, [None] * n_layers
    delta[-1], omega[-1] = net.delta_top, net.omega_top
    for l in range(n_layers - 2, -1, -1):
        back = delta[l + 1] @ w[l + 1].T                                 # δ_{l+1} W_{l+1}ᵀ
        delta[l] = df[l] * back
        wo = jnp.einsum("kr,nrs->nks", w[l + 1], omega[l + 1])          # W Ω
        curv = net.acts[l].d2f_from(net.z[l], net.a[l + 1]) * back       # f'' ⊙ δ Wᵀ
        if first_diagonal and l == 0:  # only diag(W Ω Wᵀ): a row-wise dot, no product
            omega[l] = df[l] ** 2 * jnp.einsum("nks,ks->nk", wo, w[l + 1])
            if f2:
                omega[l] = omega[l] + curv
            continue
        omega[l] = df[l][:, :, None] * jnp.einsum("nks,qs->nkq", wo, w[l + 1]) * df[l][:, None, :]
        if f2:
            eye = jnp.eye(back.shape[1], dtype=back.dtype)
            omega[l] = omega[l] + curv[:, :, None] * eye[None, :, :]
    return _Costates([_augment(al) for al in net.a], df, delta, omega)


# --- the diagonal ------------------------------------------------------------------------

def _diagonal(params, x, y, *, activation, loss, l2, f2):
    _check(params, x, l2)
    net = _top(params, x, y, activation, loss)
    cs = _costates(net, f2=f2, first_diagonal=True)
    out = []
    for a_hat, om in zip(cs.a_hat, cs.omega, strict=True):
        d_omega = om if om.ndim == 2 else jnp.diagonal(om, axis1=1, axis2=2)   # (N, n_l)
        d = (a_hat * a_hat).T @ d_omega                                     # (n_{l-1}+1, n_l)
        dw, db = d[:-1], d[-1]
        if _has_l2(l2):
            dw = dw + jnp.asarray(l2, dw.dtype)
        out.append((dw, db))
    return tuple(out)


def hessian_diagonal(params: Params, x: ArrayLike, y: ArrayLike, *,
                     activation: ActivationArg, loss: _losses.LossLike,
                     l2: ArrayLike = 0.0) -> tuple:
    """The diagonal of the exact Hessian, params-shaped, without forming any block.

    diag H_l = (â_{l-1}²)ᵀ diag(Ω_l) + λ on the weights: the squares of each layer's
    augmented input against the diagonal of its second-order costate (module doc: which
    entries are needed and the cost, O(N L n³) for width n).

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      x: inputs, (N, n_0).
      y: float targets (N, n_L) for "mse", integer labels (N,) for
        "softmax_cross_entropy", whatever a user's Loss takes.
      activation: a name in manual.activations.ACTIVATIONS, an Activation, or a sequence
        with one per hidden layer (static).
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss (static).
      l2: λ of the penalty ½ λ Σ_l ||W_l||² (weights only).

    Returns:
      A tuple of (dw, db) pairs shaped like params: ∂²E/∂w², ∂²E/∂b² elementwise, in the
      dtype of x. Its sum is the exact trace of H.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual import stagewise
        >>> params = ((jnp.ones((1, 1)), jnp.zeros(1)),)
        >>> ((dw, db),) = stagewise.hessian_diagonal(params, jnp.full((2, 1), 3.0),
        ...                                          jnp.zeros((2, 1)), activation="tanh",
        ...                                          loss="mse")
        >>> float(dw[0, 0]), float(db[0])
        (9.0, 1.0)
    """
    return _diagonal(params, x, y, activation=activation, loss=loss, l2=l2, f2=True)


def gauss_newton_diagonal(params: Params, x: ArrayLike, y: ArrayLike, *,
                          activation: ActivationArg, loss: _losses.LossLike,
                          l2: ArrayLike = 0.0) -> tuple:
    """The diagonal of the Gauss-Newton matrix G, params-shaped, without forming any block.

    The read-out of ``hessian_diagonal`` on the Gauss-Newton second-order costates
    (Ω without its f'' term), plus λ on the weights.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian_diagonal``.

    Returns:
      A tuple of (dw, db) pairs shaped like params, in the dtype of x; non-negative for
      convex losses.
    """
    return _diagonal(params, x, y, activation=activation, loss=loss, l2=l2, f2=False)


# --- mixed costates and tiles -------------------------------------------------------------

def _mixed(net, cs, m, *, cross):
    """(Y_lm, A_lm) for l = 0..m of column layer m; A padded with a zero bias column.

    Y_mm = Ω_m and A_mm = None (Γ_mm = â ⊗ Ω_m); A is None everywhere without ``cross``.
    """
    y_all, a_all = {m: cs.omega[m]}, {m: None}
    if m == 0:
        return y_all, a_all
    width_in = net.a[m].shape[1]
    y_ = cs.df[m - 1][:, :, None] * jnp.einsum("kr,nrq->nkq", net.w[m], cs.omega[m])
    a_ = cs.df[m - 1][:, :, None] * jnp.eye(width_in, dtype=y_.dtype)[None, :, :]
    for l in range(m - 1, -1, -1):
        if l < m - 1:  # one stage back: both factors times M_l = D_l W_{l+1}
            ya = jnp.concatenate([y_, a_], axis=2) if cross else y_
            ya = cs.df[l][:, :, None] * jnp.einsum("kr,nrc->nkc", net.w[l + 1], ya)
            y_, a_ = ya[:, :, :y_.shape[2]], ya[:, :, y_.shape[2]:]
        y_all[l] = y_
        a_all[l] = (jnp.concatenate([a_, jnp.zeros(a_.shape[:2] + (1,), a_.dtype)], axis=2)
                    if cross else None)
    return y_all, a_all


class _Pair:
    """The factors of the tiles of H_lm: rows of â_{l-1}ᵀ, â_{m-1}ᵀ, Y_lm, A_lm (None
    without the cross term, or where it is the diagonal D_{m-1}: ``df_t`` = D_{m-1}ᵀ), δ_m."""

    def __init__(self, a_t, a_t_m, y_lm, a_lm, delta_m, df_t):
        self.a_t, self.a_t_m, self.y_lm, self.a_lm = a_t, a_t_m, y_lm, a_lm
        self.delta_m, self.df_t = delta_m, df_t


def _tile_gamma(pair, j0, width):
    """Σₙ â_{l-1}[n, rows]ᵀ Γ_lm[n, :, j, :] for the input rows j = j0 .. j0 + width - 1
    of Ŵ_m, with that chunk of Γ_lm = â_{m-1} ⊗ Y_lm + A_lm ⊗ δ_m formed."""
    a_c = lax.dynamic_slice_in_dim(pair.a_t_m, j0, width, axis=0).T          # â_{m-1}
    gamma = a_c[:, None, :, None] * pair.y_lm[:, :, None, :]                 # â ⊗ Y_lm
    # + A_lm ⊗ δ_m (A_lm has a zero bias column)
    a_part = lax.dynamic_slice_in_dim(pair.a_lm, j0, width, axis=2)
    gamma = gamma + a_part[:, :, :, None] * pair.delta_m[:, None, None, :]
    n, k, j, q = gamma.shape
    return (pair.a_t @ gamma.reshape(n, k * j * q)).reshape(pair.a_t.shape[0] * k, j * q)


def _tile_scaled(pair, j0, width):
    """``width`` input rows j of Ŵ_m without forming Γ: the â_{m-1}[j] factor scales the
    small left operand instead of Y_lm, Σₙ (â_{l-1}[n, i] â_{m-1}[n, j]) Y_lm[n, k, q], one
    product for all of them (the left operands stacked), and Y_lm is read as it is (it
    stays in cache from tile to tile). Where A_lm = D_{m-1} (l = m-1) its cross term lives
    on the rows (i, k = j) alone: Σₙ â_{l-1}[n, i] f'_{m-1}[n, j] δ_m[n, q] (nothing on the
    bias row j = n_{m-1})."""
    rows, n = pair.a_t.shape
    _, k, q = pair.y_lm.shape
    a_c = lax.dynamic_slice_in_dim(pair.a_t_m, j0, width, axis=0)             # (c, N)
    left = (a_c[:, None, :] * pair.a_t[None, :, :]).reshape(width * rows, n)
    out = (left @ pair.y_lm.reshape(n, k * q)).reshape(width, rows, k, q)
    if pair.df_t is not None:
        js = j0 + jnp.arange(width)
        jc = jnp.minimum(js, k - 1)  # the bias row adds zero: any in-range row will do
        d = pair.df_t[jc]                                                    # (c, N)
        cross = ((d[:, None, :] * pair.a_t[None, :, :]).reshape(width * rows, n)
                 @ pair.delta_m).reshape(width, rows, q)
        cross = cross * (js < k).astype(cross.dtype)[:, None, None]
        out = out.at[jnp.arange(width), :, jc, :].add(cross)
    # (c, i, k, q) -> rows (i, k), columns (j, q): a transpose in cache (none for c = 1)
    return out.transpose(1, 2, 0, 3).reshape(rows * k, width * q)


def _assemble(bufs, net, cs, jobs, *, cross, accumulate):
    """Run every job, one column layer m at a time (its Y_lm, A_lm live only meanwhile)."""
    a_t = [_tiles.transposed(a) for a in cs.a_hat]
    bufs = list(bufs)
    tiling = TILING
    for m in sorted({job.m for job in jobs}):
        y_all, a_all = _mixed(net, cs, m, cross=cross)
        for job in (job for job in jobs if job.m == m):
            l = job.l
            adjacent = cross and l == m - 1
            pair = _Pair(a_t[l][job.rows[0]:job.rows[1]], a_t[m], y_all[l],
                         None if adjacent else a_all[l], cs.delta[m],
                         cs.df[m - 1].T if adjacent else None)
            scaled = pair.a_lm is None

            def tile(j0, width, pair=pair, scaled=scaled):
                return (_tile_scaled if scaled else _tile_gamma)(pair, j0, width)

            bufs[job.buf] = _tiles.strip(bufs[job.buf], job, tile, width_l=net.w[l].shape[1],
                                         width_m=net.w[m].shape[1], scaled=scaled,
                                         accumulate=accumulate, tiling=tiling)
    return tuple(bufs)


def _block_jobs(buf, l, m, widths, row, col):
    """The jobs of block H_lm (and H_ml mirrored): Ŵ_l is n_{l-1} + 1 input rows of n_l."""
    return _tiles.block_jobs(buf, l, m, widths[l] + 1, widths[m] + 1, widths[l + 1],
                             widths[m + 1], row, col, TILING)


def _per_sample_numbers(widths, jobs):
    """Numbers held per sample: every Ω, plus Y and A of the largest column layer."""
    k = widths[1:]
    mixed = max(sum(k[l] * (2 * k[m] + widths[m] + 1) for l in range(m + 1))
                for m in {job.m for job in jobs})
    return sum(kl * kl for kl in k) + mixed


def _run(params, x, y, *, activation, loss, f2, cross, shapes, jobs, chunk_bytes):
    """Forward once over the whole batch, then every job's tiles into buffers of
    ``shapes``, in sample chunks if the costates would exceed ``chunk_bytes``."""
    net = _top(params, x, y, activation, loss)
    dtype = jnp.result_type(x)
    widths = [x.shape[1]] + [w.shape[1] for w in net.w]
    per_sample = _per_sample_numbers(widths, jobs) * dtype.itemsize
    count, size = _tiles.chunks(x.shape[0], per_sample, chunk_bytes)

    def assemble(bufs, net, accumulate):
        return _assemble(bufs, net, _costates(net, f2=f2), jobs, cross=cross,
                         accumulate=accumulate)

    if count == 1:
        return assemble(_tiles.empty(shapes, dtype), net, accumulate=False)

    def write(acc, chunk):
        a, z, d_top, o_top = chunk
        return assemble(acc, net.chunk(a, z, d_top, o_top), accumulate=True)

    def split(t):
        return _tiles.pad_split(t, count, size)

    chunked = ([split(t) for t in net.a], [split(t) for t in net.z], split(net.delta_top),
               split(net.omega_top))
    return _tiles.accumulate_chunks(write, shapes, dtype, chunked)

def _weight_rows(params, offsets):
    """Indices (in ravel order) of every weight coordinate (biases excluded)."""
    return np.concatenate([off + np.arange(w.size) for (w, _), off in
                           zip(params, offsets, strict=True)])


def curvature(params: Params, x: ArrayLike, y: ArrayLike, *,
              activation: ActivationArg, loss: _losses.LossLike,
              l2: ArrayLike = 0.0, f2_term: bool = True,
              cross_term: bool = True, chunk_bytes: int | None = CHUNK_BYTES) -> Array:
    """The (P, P) stagewise matrix with a choice of the residual terms.

    ``hessian`` is ``f2_term=True, cross_term=True``, ``gauss_newton`` both False; the
    mixed settings are the Hessian with one residual term dropped (for studies of what
    each term carries, and for tests that a missing term is caught).

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.
      f2_term: keep diag(f''(z_l) ⊙ δ_{l+1} W_{l+1}ᵀ) in Ω_l.
      cross_term: keep the first-order cross term A_lm ⊗ δ_m in Γ_lm.
      chunk_bytes: bound on one sample chunk's costates (None: never chunk).

    Returns:
      (P, P) in ravel_pytree(params) order, in the dtype of x.
    """
    _check(params, x, l2)
    offsets, sizes = layout(params)
    total = sum(sizes)
    widths = [x.shape[1]] + [w.shape[1] for w, _ in params]
    jobs = [job for m in range(len(sizes)) for l in range(m + 1)
            for job in _block_jobs(0, l, m, widths, offsets[l], offsets[m])]
    (buf,) = _run(params, x, y, activation=activation, loss=loss, f2=f2_term,
                  cross=cross_term, shapes=[(total, total)], jobs=jobs, chunk_bytes=chunk_bytes)
    if _has_l2(l2):
        idx = _weight_rows(params, offsets)
        buf = buf.at[idx, idx].add(jnp.asarray(l2, buf.dtype))
    return buf


def hessian(params: Params, x: ArrayLike, y: ArrayLike, *,
            activation: ActivationArg, loss: _losses.LossLike,
            l2: ArrayLike = 0.0) -> Array:
    """The exact Hessian ∂²E/∂θ² of an MLP's loss, by stagewise second-order backprop.

    Ω_L = ℓ''/N;  Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag(f'' ⊙ δ_{l+1} W_{l+1}ᵀ);
    H_ll = Σₙ (â_{l-1} â_{l-1}ᵀ) ⊗ Ω_l;  H_lm = Σₙ â_{l-1}ᵀ Γ_lm (l < m) with the mixed
    costate Γ_lm = â_{m-1} ⊗ (∂z_m/∂z_l Ω_m) + (∂a_{m-1}/∂z_l) ⊗ δ_m; H_ml = H_lmᵀ;
    plus λ on the weight diagonal. Derivation and assembly: the module docstring.

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      x: inputs, (N, n_0).
      y: float targets (N, n_L) for "mse", integer labels (N,) for
        "softmax_cross_entropy", whatever a user's Loss takes.
      activation: a name in manual.activations.ACTIVATIONS, an Activation, or a sequence
        with one per hidden layer (static).
      loss: a name in manual.losses.LOSSES or a manual.losses.Loss (static).
      l2: λ of the penalty ½ λ Σ_l ||W_l||² (weights only).

    Returns:
      (P, P) in the order of jax.flatten_util.ravel_pytree(params) (w1 row-major, b1,
      w2, ...), symmetric (off-diagonal blocks exactly, diagonal blocks to rounding),
      in the dtype of x.
    """
    return curvature(params, x, y, activation=activation, loss=loss, l2=l2)


def gauss_newton(params: Params, x: ArrayLike, y: ArrayLike, *,
                 activation: ActivationArg, loss: _losses.LossLike,
                 l2: ArrayLike = 0.0) -> Array:
    """The Gauss-Newton matrix G = Σₙ Jₙᵀ (ℓ''ₙ / N) Jₙ + λ I_weights, Jₙ = ∂z_Lₙ/∂θ.

    The stagewise recursion of ``hessian`` without the f'' term in Ω and without the
    first-order cross term in Γ. The L2 penalty's own (exact, constant) Hessian λ I on
    the weight coordinates is included, so G is the Hessian with only the residual
    terms dropped.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.

    Returns:
      (P, P) in ravel_pytree(params) order, symmetric positive semi-definite (for
      convex losses), in the dtype of x.
    """
    return curvature(params, x, y, activation=activation, loss=loss, l2=l2, f2_term=False,
                     cross_term=False)


def hessian_blocks(params: Params, x: ArrayLike, y: ArrayLike, *,
                   activation: ActivationArg, loss: _losses.LossLike,
                   l2: ArrayLike = 0.0) -> tuple:
    """The layer-diagonal blocks H_ll = Σₙ (â_{l-1} â_{l-1}ᵀ) ⊗ Ω_l (+ λ on the weights).

    Each block by the banded tiles of ``hessian`` (module doc) into its own (P_l, P_l)
    buffer; no off-diagonal block and no (P, P) matrix is formed. The block-diagonal
    approximation of H, exact in its blocks.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.

    Returns:
      A tuple of L arrays (P_l, P_l), P_l = (n_{l-1} + 1) n_l, each in the ravel order of
      (w_l, b_l) (w_l row-major, then b_l), in the dtype of x.
    """
    _check(params, x, l2)
    _, sizes = layout(params)
    widths = [x.shape[1]] + [w.shape[1] for w, _ in params]
    jobs = [job for l in range(len(sizes)) for job in _block_jobs(l, l, l, widths, 0, 0)]
    blocks = _run(params, x, y, activation=activation, loss=loss, f2=True, cross=True,
                  shapes=[(size, size) for size in sizes], jobs=jobs, chunk_bytes=CHUNK_BYTES)
    if not _has_l2(l2):
        return blocks
    out = []
    for (w, _), block in zip(params, blocks, strict=True):
        idx = np.arange(w.size)
        out.append(block.at[idx, idx].add(jnp.asarray(l2, block.dtype)))
    return tuple(out)


def _row_range(start, stop, total):
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a Python int (rows are static), got {value!r}")
    if not 0 <= start < stop <= total:
        raise ValueError(f"rows must satisfy 0 <= start < stop <= P = {total}, got start "
                         f"{start}, stop {stop}")


def hessian_rows(params: Params, x: ArrayLike, y: ArrayLike, start: int, stop: int, *,
                 activation: ActivationArg, loss: _losses.LossLike,
                 l2: ArrayLike = 0.0,
                 chunk_bytes: int | None = CHUNK_BYTES) -> Array:
    """Rows [start, stop) of the exact Hessian, every column, computed from nothing else.

    The building block of a row-sharded Hessian: a device that owns rows [r0, r1) calls
    this with its own range and holds only its (r1 - r0, P) slab; no other row is formed
    and nothing is exchanged. Blocks right of the rows' layer (m >= l) are the tiles of
    ``hessian`` restricted to those rows of â_{l-1}ᵀ; blocks to the left (m < l) are the
    transposed tiles of H_ml restricted to those columns (module doc). The work is about
    2 N (stop - start) P flops; the whole H by ``hessian`` is half that per row, since it
    mirrors. Rows of layer l come in groups of n_l (one input row i of Ŵ_l): whole groups
    are written straight into the result; a group that an end of the range cuts is made
    in a group-sized buffer and its rows copied in place, so no slab-sized copy is made
    for any range.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.
      start, stop: Python ints, 0 <= start < stop <= P (static).
      chunk_bytes: bound on one sample chunk's costates (None: never chunk).

    Returns:
      (stop - start, P), rows start.. of H in ravel_pytree(params) order, in the dtype of x.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual import stagewise
        >>> params = ((jnp.ones((2, 3)) / 2, jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
        >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> kw = dict(activation="tanh", loss="mse")
        >>> rows = stagewise.hessian_rows(params, x, y, 5, 11, **kw)
        >>> bool(jnp.allclose(rows, stagewise.hessian(params, x, y, **kw)[5:11]))
        True
    """
    _check(params, x, l2)
    offsets, sizes = layout(params)
    total = sum(sizes)
    _row_range(start, stop, total)
    widths = [x.shape[1]] + [w.shape[1] for w, _ in params]

    def group(r):  # [first, end) rows of the group (one input row of Ŵ_l) holding row r
        l = max(l for l, off in enumerate(offsets) if off <= r)
        k = widths[l + 1]
        first = offsets[l] + (r - offsets[l]) // k * k
        return first, first + k

    def jobs_for(buf, lo, hi, origin):  # whole groups covering [lo, hi); row lo at lo - origin
        jobs = []
        for l, (off, size) in enumerate(zip(offsets, sizes, strict=True)):
            a, b = max(lo, off), min(hi, off + size)
            if a >= b:
                continue
            k = widths[l + 1]
            i_lo, i_hi = (a - off) // k, -(-(b - off) // k)
            at = off + i_lo * k - origin   # this span's first row in the buffer
            for m in range(len(sizes)):
                if m >= l:  # H_lm by product, those rows only
                    jobs.append(_tiles.Job(buf, l, m, (i_lo, i_hi), (0, widths[m] + 1),
                                     (at, offsets[m]), None))
                else:       # H_lm = H_mlᵀ: tiles of H_ml over those columns, transposed
                    jobs.append(_tiles.Job(buf, m, l, (0, widths[m] + 1), (i_lo, i_hi), None,
                                     (at, offsets[m])))
        return jobs

    def run(shapes, jobs):
        return _run(params, x, y, activation=activation, loss=loss, f2=True, cross=True,
                    shapes=shapes, jobs=jobs, chunk_bytes=chunk_bytes)

    g_lo, g_hi = group(start)[0], group(stop - 1)[1]
    a0 = start if start == g_lo else group(start)[1]   # the whole groups inside: [a0, a1)
    a1 = stop if stop == g_hi else group(stop - 1)[0]
    if a0 >= a1:  # at most two part-groups: one small slab, sliced
        (slab,) = run(shapes=[(g_hi - g_lo, total)], jobs=jobs_for(0, g_lo, g_hi, g_lo))
        slab = slab[start - g_lo:stop - g_lo]
    else:
        # The whole groups straight into the (stop - start, P) result; the part-groups at
        # either end into group-sized buffers, copied in place: no slab-sized copy.
        shapes, jobs, ends = [(stop - start, total)], jobs_for(0, a0, a1, start), []
        for lo, hi, keep in ((g_lo, a0, slice(start - g_lo, None)),
                             (a1, g_hi, slice(0, stop - a1))):
            if lo < hi:
                jobs += jobs_for(len(shapes), lo, hi, lo)
                ends.append((len(shapes), keep, max(lo, start) - start))
                shapes.append((hi - lo, total))
        bufs = run(shapes=shapes, jobs=jobs)
        slab = bufs[0]
        for buf, keep, at in ends:
            slab = lax.dynamic_update_slice(slab, bufs[buf][keep], (at, 0))
    if _has_l2(l2):
        idx = _weight_rows(params, offsets)
        idx = idx[(idx >= start) & (idx < stop)]
        slab = slab.at[idx - start, idx].add(jnp.asarray(l2, slab.dtype))
    return slab


# --- Hessian-vector products ---------------------------------------------------------------

def _check_v(params, v):
    ok = isinstance(v, (tuple, list)) and len(v) == len(params)
    ok = ok and all(isinstance(vl, (tuple, list)) and len(vl) == 2 for vl in v)
    if not ok:
        raise ValueError(f"v must be params-shaped: a tuple of {len(params)} (w, b) pairs, "
                         f"got {type(v).__name__}")
    for l, ((wl, bl), (vw, vb)) in enumerate(zip(params, v, strict=True)):
        for name, p, t in (("w", wl, vw), ("b", bl, vb)):
            if np.shape(t) != p.shape or jnp.result_type(t) != p.dtype:
                raise ValueError(f"v[{l}] {name} must have the shape and dtype of params[{l}] "
                                 f"{name}, {p.shape} {p.dtype}; got shape {np.shape(t)} and "
                                 f"dtype {jnp.result_type(t)}")


def _r_top(loss, net, y):
    """R{z_L} -> R{δ_L} = ℓ''(z_L) R{z_L} / N, by the loss's Hessian-vector product."""
    fn, logits = _losses.get(loss), net.z[-1]
    return lambda r_z: fn.hessian_vp(logits, y, r_z) / logits.shape[0]


def _r_pass(params, net, v, l2, r_top):
    """Pearlmutter's forward and backward R-passes over kept stages: H v, params-shaped.

    R{a_0} = 0 is kept symbolic (None): the products it would enter are skipped, as is
    λ V for a literal λ = 0. ``r_top`` maps R{z_L} to R{δ_L} = ℓ''(z_L) R{z_L} / N.
    """
    a, z, acts = net.a, net.z, net.acts
    n_layers = len(params)
    r_a, r_z = [None], []  # forward R-pass; R{a_0} = 0
    for l, ((wl, _), (vw, vb)) in enumerate(zip(params, v, strict=True)):
        r_z.append(a[l] @ vw + vb[None, :] + (0 if r_a[l] is None else r_a[l] @ wl))
        if l < n_layers - 1:
            r_a.append(acts[l].df_from(z[l], a[l + 1]) * r_z[l])

    delta = net.delta_top  # backward R-pass
    r_delta = r_top(r_z[-1])  # R{δ_L} = ℓ'' R{z_L} / N
    out = [None] * n_layers
    for l in range(n_layers - 1, -1, -1):
        wl, vw = params[l][0], v[l][0]
        dw = a[l].T @ r_delta
        if r_a[l] is not None:
            dw = dw + r_a[l].T @ delta
        if _has_l2(l2):
            dw = dw + jnp.asarray(l2, dw.dtype) * vw
        out[l] = (dw, r_delta.sum(axis=0))
        if l > 0:
            back, r_back = delta @ wl.T, r_delta @ wl.T + delta @ vw.T
            df = acts[l - 1].df_from(z[l - 1], a[l])
            d2f = acts[l - 1].d2f_from(z[l - 1], a[l])
            r_delta = d2f * r_z[l - 1] * back + df * r_back
            delta = df * back
    return tuple(out)


def hvp(params: Params, x: ArrayLike, y: ArrayLike, v: Params, *,
        activation: ActivationArg, loss: _losses.LossLike,
        l2: ArrayLike = 0.0) -> tuple:
    """Hessian-vector product H v by Pearlmutter's R-operator (forward and backward R-pass).

    R{z_l} = R{a_{l-1}} W_l + a_{l-1} V_l + v_b;  R{δ_L} = ℓ'' R{z_L} / N;
    R{δ_l} = f''(z_l) ⊙ R{z_l} ⊙ (δ_{l+1} W_{l+1}ᵀ) + f'(z_l) ⊙ (R{δ_{l+1}} W_{l+1}ᵀ
    + δ_{l+1} V_{l+1}ᵀ);  (Hv)_W = R{a}ᵀ δ + aᵀ R{δ} + λ V,  (Hv)_b = Σₙ R{δ}.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.
      v: the direction, params-shaped (tuple of (w, b) pairs).

    Returns:
      H v, params-shaped, in the dtype of x.
    """
    _check(params, x, l2)
    net = _top(params, x, y, activation, loss, second=False)
    _check_v(params, v)
    return _r_pass(params, net, v, l2, _r_top(loss, net, y))


def hessian_matvec(params: Params, x: ArrayLike, y: ArrayLike, *,
                   activation: ActivationArg, loss: _losses.LossLike,
                   l2: ArrayLike = 0.0) -> object:
    """v -> H v on flat (P,) vectors in ravel_pytree(params) order, for manual.spectrum.

    The forward pass and the first-order costates are computed once, here; each call is
    then the two R-passes of ``hvp`` (about one gradient's cost), with v split into
    (V_l, v_b,l) and H v joined back by hand in ravel order.

    Args:
      params, x, y, activation, loss, l2: as for ``hessian``.

    Returns:
      A function v -> H v, (P,) -> (P,), in the dtype of x.

    Example::

        >>> import jax.numpy as jnp
        >>> from manual import stagewise
        >>> params = ((jnp.ones((2, 3)) / 2, jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
        >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> matvec = stagewise.hessian_matvec(params, x, y, activation="tanh", loss="mse")
        >>> h = stagewise.hessian(params, x, y, activation="tanh", loss="mse")
        >>> bool(jnp.allclose(matvec(jnp.eye(13)[4]), h[:, 4]))
        True
    """
    _check(params, x, l2)
    net = _top(params, x, y, activation, loss, second=False)
    r_top = _r_top(loss, net, y)
    offsets, sizes = layout(params)
    total = sum(sizes)

    def matvec(v: ArrayLike) -> Array:
        if isinstance(v, (tuple, list)):
            raise ValueError(f"v must be a flat vector of shape ({total},) in "
                             f"ravel_pytree(params) order, got a {type(v).__name__} of "
                             f"{len(v)} entries (for a params-shaped v use stagewise.hvp)")
        if np.shape(v) != (total,):
            raise ValueError(f"v must be a flat vector of shape ({total},), got {np.shape(v)}")
        v = jnp.asarray(v, net.delta_top.dtype)
        tree = []
        for (w, b), off in zip(params, offsets, strict=True):
            tree.append((v[off:off + w.size].reshape(w.shape),
                         v[off + w.size:off + w.size + b.size]))
        out = _r_pass(params, net, tree, l2, r_top)
        return jnp.concatenate([t.ravel() for pair in out for t in pair])

    return matvec
