"""A corpus of user layers with hand-written VJPs, for the checker's own tests.

Written as a user would write them (jax.numpy only, no import of manual/), with explicit
broadcasting so that they run under the test session's rank-promotion "raise".

Three groups:
  CORRECT      correct layers (layer norm with dict params, attention, a GRU step, batch
               norm, a weighted cumsum, log-sum-exp, a two-output function, softmax
               cross-entropy with integer labels, a dense layer)
  ILL          correct but deliberately ill-conditioned (saturated attention, layer norm
               of nearly constant rows, exp(10x), large logits)
  BUGGY        each a correct layer with one planted bug, and the tensor it breaks

Each entry builds its inputs from a numpy Generator, in float64 then rounded, so that
both dtypes of a seed solve the same problem.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    fun: Callable
    vjp: Callable
    inputs: Callable  # (rng, dtype) -> tuple of primals
    wrong: str = ""   # for BUGGY: the tensor the bug breaks


def _cast(dtype, *arrays):
    return tuple(np.asarray(a).astype(dtype) for a in arrays)


# --- layer norm (dict params) -------------------------------------------------------------

LN_EPS = 1e-5


def layer_norm(x, params):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + LN_EPS)
    return xc * rstd * params["gamma"][None, :] + params["beta"][None, :]


def _ln_parts(x, eps=LN_EPS):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
    return xc * rstd, rstd


def layer_norm_vjp(x, params, dy):
    xhat, rstd = _ln_parts(x)
    g = dy * params["gamma"][None, :]
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                 - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    return dx, {"gamma": jnp.sum(dy * xhat, axis=0), "beta": jnp.sum(dy, axis=0)}


def layer_norm_vjp_dropped_term(x, params, dy):  # BUG: the xhat·mean(g·xhat) term is gone
    xhat, rstd = _ln_parts(x)
    g = dy * params["gamma"][None, :]
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True))
    return dx, {"gamma": jnp.sum(dy * xhat, axis=0), "beta": jnp.sum(dy, axis=0)}


def layer_norm_vjp_no_eps(x, params, dy):  # BUG: eps dropped in the backward
    xhat, rstd = _ln_parts(x, eps=0.0)
    g = dy * params["gamma"][None, :]
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                 - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    return dx, {"gamma": jnp.sum(dy * xhat, axis=0), "beta": jnp.sum(dy, axis=0)}


def ln_inputs(rng, dtype, n=6, d=16, scale=0.1, offset=0.0):
    # rows of spread 0.1: var 1e-2 is 1000x eps, so dropping eps moves dx by ~5e-4
    x = offset + scale * rng.standard_normal((n, d))
    gamma, beta = 1.0 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d)
    x, gamma, beta = _cast(dtype, x, gamma, beta)
    return x, {"gamma": gamma, "beta": beta}


def near_constant_rows(rng, dtype):
    # rows 1000 + 0.03·N(0,1): the mean is ~3e4 standard deviations from zero, so x - mean
    # cancels 4-5 digits (float64 loses ~3e4 u, float32 is left with ~3 digits); var ~1e-3
    # still dwarfs eps
    return ln_inputs(rng, dtype, scale=0.03, offset=1000.0)


# --- attention -----------------------------------------------------------------------------

def attention(q, k, v):
    s = q @ k.T / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    p = jax.nn.softmax(s, axis=-1)
    return p @ v


def attention_vjp(q, k, v, do):
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    p = jax.nn.softmax(q @ k.T * scale, axis=-1)
    dp = do @ v.T
    ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))
    return ds @ k * scale, ds.T @ q * scale, p.T @ do


def attention_vjp_no_scale(q, k, v, do):  # BUG: the 1/sqrt(d) chain factor missing in dq
    scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    p = jax.nn.softmax(q @ k.T * scale, axis=-1)
    dp = do @ v.T
    ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))
    return ds @ k, ds.T @ q * scale, p.T @ do


def attention_inputs(rng, dtype, t=5, s=7, d=8, sharpness=1.0):
    q = sharpness * rng.standard_normal((t, d))
    k, v = rng.standard_normal((s, d)), rng.standard_normal((s, d))
    return _cast(dtype, q, k, v)


SATURATION_GAP = 15.0


def saturated_inputs(rng, dtype):
    # each query scaled so that its top two logits are SATURATION_GAP apart: the softmax
    # rows are one-hot to e^-15 ≈ 3e-7, and ds is the ~3e-7 remainder of sums of O(1)
    # terms; float64 keeps ~9 digits of it (autodiff's own error ~1e-9), float32 none
    q, k, v = attention_inputs(rng, np.float64)
    logits = q @ k.T / np.sqrt(q.shape[-1])
    top2 = np.sort(logits, axis=-1)[:, -2:]
    q = q * (SATURATION_GAP / (top2[:, 1] - top2[:, 0]))[:, None]
    return _cast(dtype, q, k, v)


# --- a GRU step (dict params) ---------------------------------------------------------------

def _sig(z):
    return 1.0 / (1.0 + jnp.exp(-z))


def gru(x, h, p):
    z = _sig(x @ p["wz"] + h @ p["uz"] + p["bz"][None, :])
    r = _sig(x @ p["wr"] + h @ p["ur"] + p["br"][None, :])
    n = jnp.tanh(x @ p["wn"] + r * (h @ p["un"]) + p["bn"][None, :])
    return (1.0 - z) * n + z * h


def _gru_vjp(x, h, p, g, sign):
    z = _sig(x @ p["wz"] + h @ p["uz"] + p["bz"][None, :])
    r = _sig(x @ p["wr"] + h @ p["ur"] + p["br"][None, :])
    hu = h @ p["un"]
    n = jnp.tanh(x @ p["wn"] + r * hu + p["bn"][None, :])
    dn = g * (1.0 - z)
    dz = sign * g * (h - n)
    dan = dn * (1.0 - n * n)
    daz = dz * z * (1.0 - z)
    dar = dan * hu * r * (1.0 - r)
    dhu = dan * r
    dx = daz @ p["wz"].T + dar @ p["wr"].T + dan @ p["wn"].T
    dh = g * z + daz @ p["uz"].T + dar @ p["ur"].T + dhu @ p["un"].T
    dp = {"wz": x.T @ daz, "uz": h.T @ daz, "bz": jnp.sum(daz, axis=0),
          "wr": x.T @ dar, "ur": h.T @ dar, "br": jnp.sum(dar, axis=0),
          "wn": x.T @ dan, "un": h.T @ dhu, "bn": jnp.sum(dan, axis=0)}
    return dx, dh, dp


def gru_vjp(x, h, p, g):
    return _gru_vjp(x, h, p, g, 1.0)


def gru_vjp_wrong_sign(x, h, p, g):  # BUG: dz = g (n - h) instead of g (h - n)
    return _gru_vjp(x, h, p, g, -1.0)


def gru_inputs(rng, dtype, n=4, d=5, hdim=6):
    p = {}
    for gate in "zrn":
        p["w" + gate] = rng.standard_normal((d, hdim)) / np.sqrt(d)
        p["u" + gate] = rng.standard_normal((hdim, hdim)) / np.sqrt(hdim)
        p["b" + gate] = 0.1 * rng.standard_normal(hdim)
    x, h = rng.standard_normal((n, d)), np.tanh(rng.standard_normal((n, hdim)))
    x, h = _cast(dtype, x, h)
    return x, h, {key: np.asarray(val).astype(dtype) for key, val in p.items()}


# --- batch norm (training mode) ---------------------------------------------------------------

BN_EPS = 1e-5


def batch_norm(x, gamma, beta):
    mu = jnp.mean(x, axis=0, keepdims=True)
    xc = x - mu
    rstd = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=0, keepdims=True) + BN_EPS)
    return xc * rstd * gamma[None, :] + beta[None, :]


def _batch_norm_vjp(x, gamma, beta, dy, axis):
    mu = jnp.mean(x, axis=0, keepdims=True)
    xc = x - mu
    rstd = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=0, keepdims=True) + BN_EPS)
    xhat = xc * rstd
    g = dy * gamma[None, :]
    dx = rstd * (g - jnp.mean(g, axis=axis, keepdims=True)
                 - xhat * jnp.mean(g * xhat, axis=0, keepdims=True))
    return dx, jnp.sum(dy * xhat, axis=0), jnp.sum(dy, axis=0)


def batch_norm_vjp(x, gamma, beta, dy):
    return _batch_norm_vjp(x, gamma, beta, dy, axis=0)


def batch_norm_vjp_wrong_axis(x, gamma, beta, dy):  # BUG: mean(g) over features, not batch
    return _batch_norm_vjp(x, gamma, beta, dy, axis=1)


def bn_inputs(rng, dtype, n=8, d=5):
    x = 2.0 + 1.5 * rng.standard_normal((n, d))
    return _cast(dtype, x, 1.0 + 0.1 * rng.standard_normal(d), 0.1 * rng.standard_normal(d))


# --- weighted cumulative sum, a time loop -------------------------------------------------------

def weighted_cumsum(x, w):
    """y_t = sum_{s <= t} w_s x_s over time (axis 0)."""
    return jnp.cumsum(w[:, None] * x, axis=0)


def _suffix_sums(dy, off_by_one):
    """G_s = sum_{t >= s} dy_t by a reverse loop over time."""
    def step(acc, dy_t):
        new = acc + dy_t
        return new, (acc if off_by_one else new)  # BUG when off_by_one: emits sum_{t > s}
    return jax.lax.scan(step, jnp.zeros_like(dy[0]), dy, reverse=True)[1]


def weighted_cumsum_vjp(x, w, dy):
    big_g = _suffix_sums(dy, off_by_one=False)
    return w[:, None] * big_g, jnp.sum(x * big_g, axis=1)


def weighted_cumsum_vjp_off_by_one(x, w, dy):
    big_g = _suffix_sums(dy, off_by_one=True)
    return w[:, None] * big_g, jnp.sum(x * big_g, axis=1)


def cumsum_inputs(rng, dtype, t=9, d=3):
    return _cast(dtype, rng.standard_normal((t, d)), rng.standard_normal(t))


# --- log-sum-exp, softmax cross-entropy, exp(10x) -----------------------------------------------

def logsumexp(x):
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return m[:, 0] + jnp.log(jnp.sum(jnp.exp(x - m), axis=-1))


def logsumexp_vjp(x, dy):
    return jax.nn.softmax(x, axis=-1) * dy[:, None]


def lse_inputs(rng, dtype, scale=1.0):
    return _cast(dtype, scale * rng.standard_normal((4, 6)))


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy with integer labels (a constant primal)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return -jnp.mean(picked)


def cross_entropy_vjp(logits, labels, dy):
    n = logits.shape[0]
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return dy * (jax.nn.softmax(logits, axis=-1) - onehot) / n, None


def ce_inputs(rng, dtype, scale=1.0, n=6, m=5):
    logits = scale * rng.standard_normal((n, m))
    return np.asarray(logits).astype(dtype), rng.integers(0, m, size=n).astype(np.int32)


def large_logits(rng, dtype):
    # logits 1e4 + 3·N(0,1): the loss is the O(1) difference of two ~1e4 numbers, so
    # its rounding (~1e4·eps) swamps a finite difference with a fixed tolerance
    logits, labels = ce_inputs(rng, np.float64, scale=3.0)
    return np.asarray(1e4 + logits).astype(dtype), labels


def exp10(x):
    return jnp.exp(10.0 * x)


def exp10_vjp(x, dy):
    return 10.0 * jnp.exp(10.0 * x) * dy


def exp10_vjp_no_chain(x, dy):  # BUG: the chain factor 10 is missing
    return jnp.exp(10.0 * x) * dy


def exp10_inputs(rng, dtype):
    # 10x up to ~±15: values span e^-15..e^15, and the 5th derivative along a direction
    # is 10^5 times the first: a fixed 1e-9 finite-difference tolerance fails here
    return _cast(dtype, 0.6 * rng.standard_normal((3, 4)))


# --- a dense layer (square weights: a transpose is the same shape) -------------------------------

def dense(x, w, b):
    return jnp.tanh(x @ w + b[None, :])


def dense_vjp(x, w, b, dy):
    dz = dy * (1.0 - jnp.tanh(x @ w + b[None, :]) ** 2)
    return dz @ w.T, x.T @ dz, jnp.sum(dz, axis=0)


def dense_vjp_transposed(x, w, b, dy):  # BUG: dx = dz w instead of dz wᵀ
    dz = dy * (1.0 - jnp.tanh(x @ w + b[None, :]) ** 2)
    return dz @ w, x.T @ dz, jnp.sum(dz, axis=0)


def dense_inputs(rng, dtype, n=5, d=6):
    w = rng.standard_normal((d, d)) / np.sqrt(d)
    return _cast(dtype, rng.standard_normal((n, d)), w, 0.1 * rng.standard_normal(d))


# --- a two-output function ------------------------------------------------------------------------

def two_outputs(x, w):
    return x @ w, jnp.sum(jnp.tanh(x), axis=-1)


def two_outputs_vjp(x, w, cts):
    da, db = cts
    dx = da @ w.T + db[:, None] * (1.0 - jnp.tanh(x) ** 2)
    return dx, x.T @ da


def two_inputs(rng, dtype):
    return _cast(dtype, rng.standard_normal((4, 3)), rng.standard_normal((3, 5)))


# --- tanh-GELU, and two bugs only a float64 truth sees in float32 ---------------------------

GELU_C = 0.044715
GELU_A = 0.7978845608028654  # sqrt(2 / pi), a Python float: weak, it keeps x's dtype


def gelu(x):
    return 0.5 * x * (1.0 + jnp.tanh(GELU_A * (x + GELU_C * x ** 3)))


def _gelu_vjp(x, dy, c):
    t = jnp.tanh(GELU_A * (x + c * x ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_A * (1.0 + 3.0 * c * x * x))


def gelu_vjp(x, dy):
    return _gelu_vjp(x, dy, GELU_C)


def gelu_vjp_rounded_constant(x, dy):  # BUG: 0.0447 for 0.044715 in the backward only
    return _gelu_vjp(x, dy, 0.0447)


def gelu_inputs(rng, dtype):
    return _cast(dtype, 2.0 * rng.standard_normal((8, 16)))


def layer_norm_vjp_dgamma_off(x, params, dy):  # BUG: dγ 0.2 % too large
    dx, dp = layer_norm_vjp(x, params, dy)
    return dx, {"gamma": 1.002 * dp["gamma"], "beta": dp["beta"]}


def offset_rows(rng, dtype):
    # rows 300 + 0.1·N(0,1): x - mean cancels ~3.5 digits; in float32 autodiff's dγ is
    # ~2.5e-4 off the float64 truth and the widened tolerance ~3e-3 admits a 0.2 % slip
    return ln_inputs(rng, dtype, offset=300.0)


def logits_450_inputs(rng, dtype):
    # q scaled (one factor) so that the largest logit |q·k|/√d is 450: rows whose top two
    # logits are close keep a soft softmax, so ds is O(1) where the logits' own rounding,
    # 450·u absolute, is amplified by e^s; the derivative is ill-conditioned by ~1e3-1e4 u
    q, k, v = attention_inputs(rng, np.float64)
    logits = q @ k.T / np.sqrt(q.shape[-1])
    return _cast(dtype, q * (450.0 / np.max(np.abs(logits))), k, v)


CORRECT = (
    Entry("layer_norm", layer_norm, layer_norm_vjp, ln_inputs),
    Entry("attention", attention, attention_vjp, attention_inputs),
    Entry("gru_step", gru, gru_vjp, gru_inputs),
    Entry("batch_norm", batch_norm, batch_norm_vjp, bn_inputs),
    Entry("weighted_cumsum", weighted_cumsum, weighted_cumsum_vjp, cumsum_inputs),
    Entry("logsumexp", logsumexp, logsumexp_vjp, lse_inputs),
    Entry("two_outputs", two_outputs, two_outputs_vjp, two_inputs),
    Entry("cross_entropy", cross_entropy, cross_entropy_vjp, ce_inputs),
    Entry("gelu", gelu, gelu_vjp, gelu_inputs),
    Entry("dense", dense, dense_vjp, dense_inputs),  # last: test_checker's half precision
)

ILL = (
    Entry("saturated_attention", attention, attention_vjp, saturated_inputs),
    Entry("near_constant_layer_norm", layer_norm, layer_norm_vjp, near_constant_rows),
    Entry("offset_layer_norm", layer_norm, layer_norm_vjp, offset_rows),
    Entry("exp10", exp10, exp10_vjp, exp10_inputs),
    Entry("large_logits", cross_entropy, cross_entropy_vjp, large_logits),
    Entry("logits_450_attention", attention, attention_vjp, logits_450_inputs),
)

BUGGY = (
    Entry("wrong_transpose", dense, dense_vjp_transposed, dense_inputs, wrong="x"),
    Entry("dropped_term", layer_norm, layer_norm_vjp_dropped_term, ln_inputs, wrong="x"),
    Entry("wrong_sign", gru, gru_vjp_wrong_sign, gru_inputs, wrong="x"),
    Entry("eps_dropped", layer_norm, layer_norm_vjp_no_eps, ln_inputs, wrong="x"),
    Entry("off_by_one_time_loop", weighted_cumsum, weighted_cumsum_vjp_off_by_one,
          cumsum_inputs, wrong="x"),
    Entry("wrong_reduction_axis", batch_norm, batch_norm_vjp_wrong_axis, bn_inputs, wrong="x"),
    Entry("missing_chain_factor", exp10, exp10_vjp_no_chain, exp10_inputs, wrong="x"),
    Entry("missing_scale_in_dq", attention, attention_vjp_no_scale, attention_inputs, wrong="q"),
    Entry("gelu_rounded_constant", gelu, gelu_vjp_rounded_constant, gelu_inputs, wrong="x"),
    Entry("dgamma_0.2%", layer_norm, layer_norm_vjp_dgamma_off, offset_rows,
          wrong="params['gamma']"),
)


def primals(entry, seed, dtype):
    """The entry's inputs for ``seed`` in ``dtype`` (numpy arrays)."""
    return entry.inputs(np.random.default_rng([seed, 10]), dtype)
