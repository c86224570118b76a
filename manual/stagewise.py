"""Second-order stagewise backprop: the exact Hessian of an MLP, its Gauss-Newton
matrix, and Hessian-vector products, by hand.

Source: E. Mizutani & S. E. Dreyfus, "On derivation of stagewise second-order
backpropagation by invariant imbedding for multi-stage neural-network learning"
(IJCNN 2006) and "Second-order stagewise backpropagation for Hessian-matrix analyses
and investigation of negative curvature" (Neural Networks 21, 2008); B. Pearlmutter,
"Fast exact multiplication by the Hessian" (Neural Computation 6, 1994) for hvp.

Set-up (manual/mlp.py; row vectors, batch first, layers l = 1..L, a_0 = x)::

    z_l = a_{l-1} W_l + b_l = â_{l-1} Ŵ_l     â = [a, 1],  Ŵ_l = [W_l; b_l]
    a_l = f(z_l) (l < L),  z_L = logits,  E = 1/N Σₙ ℓ(z_Lₙ, yₙ) + ½ λ Σ_l ||W_l||²

θ_l, the l-th slice of ravel_pytree(params), is W_l row-major followed by b_l, which
is exactly Ŵ_l row-major: entry (i, k) of Ŵ_l (i = n_{l-1} is the bias row) sits at
offset_l + i n_l + k. Everything below is per sample n (sums over n are written out);
D_l = diag f'(z_l) and M_l = D_l W_{l+1} = ∂z_{l+1}/∂z_l (rows index z_l).

First-order costates (Kelley-Bryson; the gradient of the batch mean)::

    δ_L = ∂E/∂z_L = ℓ'(z_L) / N,      δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ)
    ∂E/∂Ŵ_l[i, k] = Σₙ â_{l-1}[i] δ_l[k]

Second-order costates Ω_l = ∂δ_l/∂z_l = ∂²E/∂z_l∂z_l (one n_l x n_l matrix per sample).
Differentiate δ_l = D_l W_{l+1} δ_{l+1}ᵀ in z_l: z_l moves δ_{l+1} through z_{l+1}, and
moves D_l itself::

    Ω_L = ℓ''(z_L) / N
    Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag(f''(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ))

Diagonal blocks. â_{l-1} does not depend on θ_l, and δ_l depends on θ_l only through
z_l, with ∂z_l[q]/∂Ŵ_l[j, q] = â_{l-1}[j]::

    H_ll[(i,k), (j,q)] = Σₙ â_{l-1}[i] â_{l-1}[j] Ω_l[k, q]      = Σₙ (â âᵀ) ⊗ Ω_l

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

Every block (l <= m) is then one batched matrix product over the samples,
Σₙ â_{l-1}ᵀ Γ_lm (Γ_ll = â_{l-1} ⊗ Ω_l), written into one preallocated (P, P)
buffer; H_ml = H_lmᵀ is written by mirroring, so every off-diagonal pair is exactly
transposed; a diagonal block is symmetric to rounding (Ω_l is). Symmetrising those
blocks, (B + Bᵀ)/2, would cost a transposed pass over half the matrix for no gain in
accuracy, so it is not done. The L2 term adds λ to the diagonal at the weight
coordinates (biases are not penalised).

Gauss-Newton, G = Σₙ Jₙᵀ (ℓ''ₙ / N) Jₙ with Jₙ = ∂z_Lₙ/∂θ: the same recursion without
the f'' term in Ω and without the cross term in Γ (those are exactly the terms that
carry δ, the residual). G includes λ I on the weight coordinates too: the penalty is
quadratic, so its Gauss-Newton matrix is its Hessian.

Memory: Γ_lm holds N n_l (n_{m-1}+1) n_m numbers. When that exceeds CHUNK_BYTES
the samples are processed in equal chunks (zero-padded: a padded sample has
δ_L = Ω_L = 0, so every costate of it vanishes) by a lax.scan that accumulates the
blocks in the buffer; within a chunk each block is still one batched product.

hvp (Pearlmutter's R-operator, R{·} = d/dr (·)(θ + r v) at r = 0), about the cost of
one gradient::

    forward:  R{a_0} = 0,  R{z_l} = R{a_{l-1}} W_l + a_{l-1} V_l + v_{b,l},
              R{a_l} = f'(z_l) ⊙ R{z_l}
    backward: R{δ_L} = ℓ''(z_L) R{z_L} / N
              R{δ_l} = f''(z_l) ⊙ R{z_l} ⊙ (δ_{l+1} W_{l+1}ᵀ)
                       + f'(z_l) ⊙ (R{δ_{l+1}} W_{l+1}ᵀ + δ_{l+1} V_{l+1}ᵀ)
              (H v)_{W_l} = R{a_{l-1}}ᵀ δ_l + a_{l-1}ᵀ R{δ_l} + λ V_l
              (H v)_{b_l} = Σₙ R{δ_l}

Kinks: relu's f'' is 0 and f'(0) = 0 (manual/activations.py, as JAX); at a kink the
Hessian is that of the chosen one-sided branch.

Example::

    >>> import jax.numpy as jnp
    >>> from manual import stagewise
    >>> params = ((jnp.ones((2, 3)) / 2, jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
    >>> h = stagewise.hessian(params, jnp.ones((4, 2)), jnp.zeros((4, 1)),
    ...                       activation="tanh", loss="mse")
    >>> h.shape
    (13, 13)
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from manual import activations as _activations
from manual import losses as _losses
from manual import mlp as _mlp

# Bound on one chunk's largest mixed costate Γ (bytes); beyond it, samples are chunked.
CHUNK_BYTES = 256 * 2**20


def _layout(widths):
    """Offset and size of each layer's slice θ_l = Ŵ_l (row-major) in ravel order."""
    sizes = [(widths[l] + 1) * widths[l + 1] for l in range(len(widths) - 1)]
    offsets = [int(o) for o in np.cumsum([0] + sizes[:-1])]
    return offsets, sizes


def _augment(a):
    """â = [a, 1]: the bias is the weight of a constant input."""
    return jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)


def _check_l2(l2):
    if np.ndim(l2) != 0:
        raise ValueError(f"l2 must be a scalar, got shape {np.shape(l2)}")


def _top(params, x, y, activation, loss):
    """Forward stages and the top costates δ_L = ℓ'/N, Ω_L = ℓ''/N (per sample)."""
    a, z = _mlp.stages(params, x, activation=activation)
    fn = _losses.get(loss)
    return a, z, fn.grad(z[-1], y), fn.hessian(z[-1], y) / x.shape[0]


def _backward(w, act, a, z, delta_top, omega_top, *, f2, cross):
    """Blocks {(l, m): Σₙ â_{l-1}ᵀ Γ_lm} for l <= m (0-based layers) of one chunk.

    ``f2`` keeps the f'' term of Ω, ``cross`` the first-order cross term of Γ; the
    Hessian keeps both, Gauss-Newton neither.
    """
    n_layers = len(w)
    df = [act.df_from(z[l], a[l + 1]) for l in range(n_layers - 1)]  # f'(z_l), hidden
    delta, omega = [None] * n_layers, [None] * n_layers
    delta[-1], omega[-1] = delta_top, omega_top
    for l in range(n_layers - 2, -1, -1):
        back = delta[l + 1] @ w[l + 1].T                                # δ_{l+1} W_{l+1}ᵀ
        delta[l] = df[l] * back
        wow = jnp.einsum("kr,nrs,qs->nkq", w[l + 1], omega[l + 1], w[l + 1])
        omega[l] = df[l][:, :, None] * wow * df[l][:, None, :]          # D W Ω Wᵀ D
        if f2:
            eye = jnp.eye(back.shape[1], dtype=back.dtype)
            omega[l] = omega[l] + (act.d2f(z[l]) * back)[:, :, None] * eye[None, :, :]

    a_hat = [_augment(al) for al in a]                                  # â_{l-1}, input of l
    blocks = {}
    for m in range(n_layers):
        gamma = a_hat[m][:, None, :, None] * omega[m][:, :, None, :]    # â ⊗ Ω_m
        blocks[m, m] = _contract(a_hat[m], gamma)
        if m == 0:
            continue
        # Mixed costates Γ_lm, l = m-1 .. 0, as their factors Y_lm and A_lm.
        n, width_in = a[m].shape
        y_ = df[m - 1][:, :, None] * jnp.einsum("kr,nrq->nkq", w[m], omega[m])
        a_ = df[m - 1][:, :, None] * jnp.eye(width_in, dtype=y_.dtype)[None, :, :]
        for l in range(m - 1, -1, -1):
            if l < m - 1:  # one stage back: both factors times M_l = D_l W_{l+1}
                ya = jnp.einsum("kr,nrc->nkc", w[l + 1], jnp.concatenate([y_, a_], axis=2))
                ya = df[l][:, :, None] * ya
                y_, a_ = ya[:, :, :y_.shape[2]], ya[:, :, y_.shape[2]:]
            gamma = a_hat[m][:, None, :, None] * y_[:, :, None, :]      # â_{m-1} ⊗ Y_lm
            if cross:  # A_lm ⊗ δ_m, nothing on the bias row of Ŵ_m
                a_bar = jnp.concatenate([a_, jnp.zeros((n, a_.shape[1], 1), a_.dtype)], axis=2)
                gamma = gamma + a_bar[:, :, :, None] * delta[m][:, None, None, :]
            blocks[l, m] = _contract(a_hat[l], gamma)
    return blocks


def _contract(a_hat, gamma):
    """Σₙ â[n, i] Γ[n, k, j, q] as one matrix product over the samples -> (I k, J q).

    âᵀ is materialised behind an optimisation barrier: left to itself XLA folds the
    transpose into the product's dimension numbers, and on CPU that product (a short
    contraction over N, a wide output) then runs at about 60% of the speed of the plain
    (I, N) @ (N, K J Q) it becomes with a row-major âᵀ.
    """
    n, i = a_hat.shape
    _, k, j, q = gamma.shape
    a_t = lax.optimization_barrier(a_hat.T)
    return (a_t @ gamma.reshape(n, k * j * q)).reshape(i * k, j * q)


def _chunks(n, per_sample_bytes, chunk_bytes):
    """(number of chunks, samples per chunk) keeping one chunk's Γ under chunk_bytes."""
    if chunk_bytes is None or n * per_sample_bytes <= chunk_bytes:
        return 1, n
    per_chunk = max(1, int(chunk_bytes // per_sample_bytes))
    count = -(-n // per_chunk)
    return count, -(-n // count)


def _pad_split(arr, count, size):
    """(N, ...) -> (count, size, ...), zero-padded at the end."""
    pad = count * size - arr.shape[0]
    arr = jnp.concatenate([arr, jnp.zeros((pad,) + arr.shape[1:], arr.dtype)], axis=0)
    return arr.reshape((count, size) + arr.shape[1:])


def _curvature(params, x, y, *, activation, loss, l2, f2, cross, chunk_bytes=CHUNK_BYTES):
    """The (P, P) matrix assembled from the stagewise blocks (see module doc)."""
    _check_l2(l2)
    act = _activations.get(activation)
    a, z, delta_top, omega_top = _top(params, x, y, activation, loss)
    w = [wl for wl, _ in params]
    widths = [x.shape[1]] + [wl.shape[1] for wl in w]
    offsets, sizes = _layout(widths)
    total, dtype, n = sum(sizes), x.dtype, x.shape[0]

    def run(per_sample):
        return _backward(w, act, *per_sample, f2=f2, cross=cross)

    gamma_bytes = max(widths[l + 1] * sizes[m] for m in range(len(w)) for l in range(m + 1))
    count, size = _chunks(n, gamma_bytes * dtype.itemsize, chunk_bytes)
    buf = jnp.zeros((total, total), dtype)
    if count == 1:  # each block written once, the lower one as the mirror image
        for (l, m), block in run((a, z, delta_top, omega_top)).items():
            buf = lax.dynamic_update_slice(buf, block, (offsets[l], offsets[m]))
            if l != m:
                buf = lax.dynamic_update_slice(buf, block.T, (offsets[m], offsets[l]))
    else:  # accumulate the upper blocks chunk by chunk, mirror once at the end
        def body(acc, per_sample):
            for (l, m), block in run(per_sample).items():
                old = lax.dynamic_slice(acc, (offsets[l], offsets[m]), block.shape)
                acc = lax.dynamic_update_slice(acc, old + block, (offsets[l], offsets[m]))
            return acc, None

        chunked = ([_pad_split(t, count, size) for t in a], [_pad_split(t, count, size) for t in z],
                   _pad_split(delta_top, count, size), _pad_split(omega_top, count, size))
        buf, _ = lax.scan(body, buf, chunked)
        for m in range(len(w)):
            for l in range(m):
                upper = lax.dynamic_slice(buf, (offsets[l], offsets[m]), (sizes[l], sizes[m]))
                buf = lax.dynamic_update_slice(buf, upper.T, (offsets[m], offsets[l]))
    if not (isinstance(l2, (int, float)) and l2 == 0):
        idx = np.concatenate([offsets[l] + np.arange(widths[l] * widths[l + 1])
                              for l in range(len(w))])
        buf = buf.at[idx, idx].add(jnp.asarray(l2, dtype))
    return buf


def hessian(params, x, y, *, activation, loss, l2=0.0):
    """The exact Hessian ∂²E/∂θ² of an MLP's loss, by stagewise second-order backprop.

    Ω_L = ℓ''/N;  Ω_l = D_l W_{l+1} Ω_{l+1} W_{l+1}ᵀ D_l + diag(f''(z_l) ⊙ δ_{l+1} W_{l+1}ᵀ);
    H_ll = Σₙ (â_{l-1} â_{l-1}ᵀ) ⊗ Ω_l;  H_lm = Σₙ â_{l-1}ᵀ Γ_lm (l < m) with the mixed
    costate Γ_lm = â_{m-1} ⊗ (∂z_m/∂z_l Ω_m) + (∂a_{m-1}/∂z_l) ⊗ δ_m; H_ml = H_lmᵀ;
    plus λ on the weight diagonal. Derivation: the module docstring.

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,).
      x: inputs, (N, n_0).
      y: float targets (N, n_L) for "mse", integer labels (N,) for
        "softmax_cross_entropy".
      activation: a name in manual.activations.ACTIVATIONS (static).
      loss: a name in manual.losses.LOSSES (static).
      l2: λ of the penalty ½ λ Σ_l ||W_l||² (weights only).

    Returns:
      (P, P) in the order of jax.flatten_util.ravel_pytree(params) (w1 row-major, b1,
      w2, ...), symmetric (off-diagonal blocks exactly, diagonal blocks to rounding),
      in the dtype of x.
    """
    return _curvature(params, x, y, activation=activation, loss=loss, l2=l2, f2=True,
                      cross=True)


def gauss_newton(params, x, y, *, activation, loss, l2=0.0):
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
    return _curvature(params, x, y, activation=activation, loss=loss, l2=l2, f2=False,
                      cross=False)


def _check_v(params, v):
    ok = isinstance(v, (tuple, list)) and len(v) == len(params)
    ok = ok and all(isinstance(vl, (tuple, list)) and len(vl) == 2 for vl in v)
    if not ok:
        raise ValueError(f"v must be params-shaped: a tuple of {len(params)} (w, b) pairs, "
                         f"got {type(v).__name__}")
    for l, ((wl, bl), (vw, vb)) in enumerate(zip(params, v)):
        for name, p, t in (("w", wl, vw), ("b", bl, vb)):
            if np.shape(t) != p.shape or jnp.result_type(t) != p.dtype:
                raise ValueError(f"v[{l}] {name} must have the shape and dtype of params[{l}] "
                                 f"{name}, {p.shape} {p.dtype}; got shape {np.shape(t)} and "
                                 f"dtype {jnp.result_type(t)}")


def hvp(params, x, y, v, *, activation, loss, l2=0.0):
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
    _check_l2(l2)
    a, z = _mlp.stages(params, x, activation=activation)
    _check_v(params, v)
    act, fn = _activations.get(activation), _losses.get(loss)
    n_layers = len(params)

    r_a, r_z = [jnp.zeros_like(x)], []  # forward R-pass
    for l, ((wl, _), (vw, vb)) in enumerate(zip(params, v)):
        r_z.append(r_a[l] @ wl + a[l] @ vw + vb[None, :])
        if l < n_layers - 1:
            r_a.append(act.df_from(z[l], a[l + 1]) * r_z[l])

    delta = fn.grad(z[-1], y)  # backward R-pass
    r_delta = jnp.einsum("nab,nb->na", fn.hessian(z[-1], y), r_z[-1]) / x.shape[0]
    out = [None] * n_layers
    for l in range(n_layers - 1, -1, -1):
        wl, vw = params[l][0], v[l][0]
        out[l] = (r_a[l].T @ delta + a[l].T @ r_delta + jnp.asarray(l2, x.dtype) * vw,
                  r_delta.sum(axis=0))
        if l > 0:
            back, r_back = delta @ wl.T, r_delta @ wl.T + delta @ vw.T
            df = act.df_from(z[l - 1], a[l])
            r_delta = act.d2f(z[l - 1]) * r_z[l - 1] * back + df * r_back
            delta = df * back
    return tuple(out)
