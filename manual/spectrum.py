"""The top of a symmetric operator's spectrum and its trace, from matrix-vector products.

Both take ``matvec``, a function (dim,) -> (dim,) that applies a symmetric matrix A, for
example ``manual.stagewise.hessian_matvec`` (the R-operator: one gradient's cost, no
(P, P) matrix). Only jax.numpy, jax.lax and jax.random are used.

Lanczos with full reorthogonalisation (Golub & Van Loan, "Matrix Computations", 4th ed.,
§10.1 and §10.3.1; Paige, "The computation of eigenvalues and eigenvectors of very large
sparse matrices", 1971). From a random unit q_1, m steps build an orthonormal basis
Q = [q_1 .. q_m] of the Krylov space span{q_1, A q_1, .., A^{m-1} q_1} and the
tridiagonal T = Qᵀ A Q::

    w = A q_j,   α_j = q_jᵀ w,   w ← w - Q Qᵀ w  (twice: "twice is enough")
    β_j = ||w||,   q_{j+1} = w / β_j
    T = tridiag(β, α, β),   T s_i = θ_i s_i,   A (Q s_i) ≈ θ_i (Q s_i)

The Ritz values θ_i approach A's extreme eigenvalues first, the largest to machine
precision once the Krylov space holds their eigenvectors (the error of θ decays as the
square of that of Q s). Full reorthogonalisation against every earlier q keeps Q
orthonormal to rounding, so no spurious copies of converged eigenvalues appear (the
loss of orthogonality of plain Lanczos, Paige). If β_j vanishes (an invariant subspace:
the Krylov space is exhausted) the next q is a fresh random vector orthogonalised
against Q and β_j = 0 decouples T there. Cost: m products by A plus 4 m² dim flops.

Hutchinson's trace estimator (Hutchinson, "A stochastic estimator of the trace of the
influence matrix for Laplacian smoothing splines", 1990): for z with independent
Rademacher (±1) entries E[zᵀ A z] = tr A, and Var(zᵀ A z) = 2 Σ_{i≠j} A_ij² (the smallest
of any i.i.d. probe). The estimate is the mean over s probes and its standard error the
sample standard deviation / sqrt(s)::

    t̂ = (1/s) Σ_k z_kᵀ A z_k,      se = std_k(z_kᵀ A z_k) / sqrt(s)

Arguments are checked before any product: ``matvec`` must be a function (a matrix ``a``
is passed as ``lambda v: a @ v``) that maps a (dim,) vector to a (dim,) vector (checked
when it is traced: a wrong output shape, or an error raised inside it because ``dim`` does
not match the operator, is a ValueError naming matvec and dim); ``key`` must be a
jax.random key. One rule for dtypes, in both functions: ``dtype`` is the real floating
dtype the probes and the Krylov basis are computed in (float16, bfloat16, float32,
float64, or None for JAX's default float); an integer, boolean or complex dtype is a
ValueError (Rademacher probes are ±1 in any dtype, but an integer Krylov basis cannot be
normalised, and an integer zᵀ A z would silently truncate a float operator's products).

Example::

    >>> import jax, jax.numpy as jnp
    >>> from manual import spectrum
    >>> a = jnp.diag(jnp.arange(1.0, 7.0))
    >>> vals, vecs = spectrum.lanczos(lambda v: a @ v, 6, 2, key=jax.random.PRNGKey(0),
    ...                               dtype=jnp.float32)
    >>> [round(float(v), 3) for v in vals]
    [6.0, 5.0]
    >>> est, se = spectrum.hutchinson_trace(lambda v: a @ v, 6, key=jax.random.PRNGKey(1),
    ...                                     samples=4)
    >>> float(est)   # a diagonal A: every Rademacher probe gives the trace exactly
    21.0
"""

import jax.numpy as jnp
import numpy as np
from jax import lax, random

from manual.types import Array, ArrayLike, DTypeLike, Matvec

__all__ = ["default_iters", "hutchinson_trace", "lanczos"]


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _float_dtype(dtype):
    """The computing dtype: a real floating dtype, or None for JAX's default float."""
    if dtype is None:
        return jnp.asarray(1.0).dtype
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a real floating dtype (float32, float64, ...) or None, "
                         f"got {dtype!r}") from None
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be a real floating dtype (float32, float64, ...) or None, "
                         f"got {resolved} (integer, boolean and complex dtypes are refused)")
    return resolved


def _check_matvec(matvec, dim):
    if not callable(matvec):
        hint = " (for a matrix a, pass lambda v: a @ v)" if hasattr(matvec, "shape") else ""
        raise ValueError(f"matvec must be a function v -> A v on ({dim},) vectors, got "
                         f"{type(matvec).__name__}{hint}")


def _check_key(key):
    """A typed jax.random key, or a raw uint32 key (jax.random.PRNGKey)."""
    typed = hasattr(key, "dtype") and str(key.dtype).startswith("key<")
    raw = (hasattr(key, "dtype") and key.dtype == jnp.uint32 and np.ndim(key) == 1
           and np.shape(key)[0] >= 2)
    if not (typed or raw):
        got = (f"shape {np.shape(key)} and dtype {key.dtype}" if hasattr(key, "dtype")
               else repr(key))
        raise ValueError(f"key must be a jax.random key (jax.random.key(0) or "
                         f"jax.random.PRNGKey(0)), got {got}")


def _apply(matvec, v, dim):
    """matvec(v), its output checked to be (dim,) (at trace time)."""
    try:
        w = matvec(v)
    except (TypeError, ValueError) as error:
        raise ValueError(f"matvec must map a ({dim},) vector to a ({dim},) vector, but calling "
                         f"it on one raised {type(error).__name__}: {error} (does dim = {dim} "
                         f"match the operator?)") from error
    if np.shape(w) != (dim,):
        raise ValueError(f"matvec must return a ({dim},) vector for a ({dim},) input (dim = "
                         f"{dim}), got shape {np.shape(w)}")
    return w


def default_iters(dim: int, k: int) -> int:
    """The Lanczos steps used when ``iters`` is None: min(dim, max(4 k, k + 110)).

    Generous for the top few eigenvalues of a network's Hessian: at P = 3050 (tanh,
    N = 64) the top 10 agree with a dense eigensolver to ~1e-14 after 120 steps, and to
    only ~1e-8 (cross-entropy) after 80. Convergence is governed by the gaps at the top.
    """
    return min(dim, max(4 * k, k + 110))


def _orthogonalise(q, w):
    """w minus its components along the rows of q, twice (classical Gram-Schmidt)."""
    w = w - (q @ w) @ q
    return w - (q @ w) @ q


def lanczos(matvec: Matvec, dim: int, k: int, *, key: ArrayLike, iters: int | None = None,
            dtype: DTypeLike | None = jnp.float64) -> tuple[Array, Array]:
    """The k largest eigenvalues (algebraic) of a symmetric operator and their vectors.

    Args:
      matvec: v -> A v on flat (dim,) vectors, A symmetric (traceable by jax).
      dim: the size of A.
      k: how many eigenpairs, 1 <= k <= dim.
      key: a jax.random key for the starting vector (and restarts).
      iters: Lanczos steps m, k <= m <= dim (None: ``default_iters(dim, k)``). More
        steps converge more eigenvalues further; m = dim is exact up to rounding.
      dtype: the real floating dtype of the Krylov basis and of the results; float64
        needs x64 (without it JAX computes in float32 and warns). None: JAX's default
        float. Integer dtypes are refused (the module docstring's rule).

    Returns:
      (eigenvalues (k,) in descending order, eigenvectors (dim, k) with unit columns),
      the Ritz pairs of the m-step Krylov space.

    Raises:
      ValueError: dim, k or iters out of range or not ints; matvec not a function or not
      (dim,) -> (dim,); key not a jax.random key; dtype not a real floating dtype.
    """
    _check_int("dim", dim, 1, np.iinfo(np.int32).max)
    _check_int("k", k, 1, dim)
    m = default_iters(dim, k) if iters is None else iters
    _check_int("iters", m, k, dim)
    dtype = _float_dtype(dtype)
    _check_matvec(matvec, dim)
    _check_key(key)
    q0 = random.normal(key, (dim,), dtype)
    basis = jnp.zeros((m + 1, dim), dtype).at[0].set(q0 / jnp.linalg.norm(q0))
    alpha, beta = jnp.zeros(m, dtype), jnp.zeros(m, dtype)

    def restart(j, basis):
        """A random unit vector orthogonal to every q so far (an invariant subspace)."""
        r = _orthogonalise(basis, random.normal(random.fold_in(key, j + 1), (dim,), dtype))
        return r / jnp.linalg.norm(r), jnp.zeros((), dtype)

    def step(j, carry):
        basis, alpha, beta = carry
        q = basis[j]
        w = jnp.asarray(_apply(matvec, q, dim), dtype)
        a = jnp.vdot(q, w)
        # rows > j of the basis are still zero: orthogonalising against all rows is exact
        w = _orthogonalise(basis, w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(jnp.abs(a), jnp.max(jnp.abs(beta)))
        exhausted = b <= 64 * jnp.finfo(dtype).eps * jnp.maximum(scale, jnp.finfo(dtype).tiny)
        q_next, b = lax.cond(exhausted, restart,
                             lambda j, basis: (w / jnp.where(b > 0, b, 1), b), j, basis)
        return basis.at[j + 1].set(q_next), alpha.at[j].set(a), beta.at[j].set(b)

    basis, alpha, beta = lax.fori_loop(0, m, step, (basis, alpha, beta))
    t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    theta, s = jnp.linalg.eigh(t)                   # ascending
    top = theta[::-1][:k]
    vectors = basis[:m].T @ s[:, ::-1][:, :k]
    return top, vectors / jnp.linalg.norm(vectors, axis=0, keepdims=True)


def hutchinson_trace(matvec: Matvec, dim: int, *, key: ArrayLike, samples: int,
                     dtype: DTypeLike | None = None) -> tuple[Array, Array]:
    """Hutchinson's estimate of tr A from Rademacher probes, with its standard error.

    Args:
      matvec: v -> A v on flat (dim,) vectors (traceable by jax).
      dim: the size of A.
      key: a jax.random key for the probes.
      samples: the number of probes s >= 2 (the standard error needs two).
      dtype: the real floating dtype of the probes (None: JAX's default float, float64
        under x64); integer dtypes are refused, as in ``lanczos``.

    Returns:
      (estimate, standard_error): the mean of zᵀ A z over the probes and the sample
      standard deviation of those values / sqrt(s), scalars in the dtype of zᵀ A z.

    Raises:
      ValueError: dim or samples out of range or not ints; matvec not a function or not
      (dim,) -> (dim,); key not a jax.random key; dtype not a real floating dtype.
    """
    _check_int("dim", dim, 1, np.iinfo(np.int32).max)
    _check_int("samples", samples, 2, np.iinfo(np.int32).max)
    dtype = _float_dtype(dtype)
    _check_matvec(matvec, dim)
    _check_key(key)
    probes = random.rademacher(key, (samples, dim), jnp.int8).astype(dtype)
    values = lax.map(lambda z: jnp.vdot(z, _apply(matvec, z, dim)), probes)
    estimate = jnp.mean(values)
    return estimate, jnp.std(values, ddof=1) / np.sqrt(samples)
