"""The checker is sound where it used to be wrong (issue "checker, sound").

Each test is a case the checker once got wrong: a function that closes over float arrays
(the shadow, truth and finite-difference runs recast the primals but not the captured
constants), float32 bugs that pass a widened tolerance, integer primals' returned
derivatives, run-to-run noise, complex inputs. Planted bugs show each verdict can FAIL.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from manual import conv, linear, mlp
from suite import check_grad, check_hessian, check_hvp, check_vjp
from suite import compare as cmp
from suite.tests import checker_corpus as corpus

DTYPES = ("float32", "float64")
MLP = dict(activation="tanh", loss="mse")


def _mlp_data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 3)).astype(dtype)
    y = rng.normal(size=(5, 2)).astype(dtype)
    params = ((rng.normal(size=(3, 4)).astype(dtype), (0.1 * rng.normal(size=4)).astype(dtype)),
              (rng.normal(size=(4, 2)).astype(dtype), (0.1 * rng.normal(size=2)).astype(dtype)))
    return x, y, params


def _conv_data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 2, 5, 5)).astype(dtype)
    w = (0.5 * rng.normal(size=(3, 2, 3, 3))).astype(dtype)
    b = (0.1 * rng.normal(size=3)).astype(dtype)
    return x, w, b


# --- closures: captured float arrays are recast with the primals --------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_check_grad_of_an_mlp_loss_closing_over_its_data_and_a_planted_bug(dtype):
    x, y, params = _mlp_data(dtype)

    def loss(p):  # one closure for both checks: its compiled programs are shared
        return mlp.loss(p, x, y, **MLP)
    result = check_grad(loss, lambda p: mlp.grad(p, x, y, **MLP), params)
    assert result.status == "PASS", str(result)
    assert result.dtype == dtype

    def grad_bias_halved(p):
        (dw1, db1), second = mlp.grad(p, x, y, **MLP)
        return (dw1, 0.5 * db1), second
    result = check_grad(loss, grad_bias_halved, params)
    assert result.status == "FAIL", str(result)
    assert [t.name for t in result.tensors if t.status == "FAIL"] == ["p[0][1]"]


@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.slow), "float64"])
def test_check_vjp_of_linear_and_conv_closing_over_weights(dtype):
    x, w, b = _mlp_data(dtype)[0], *_mlp_data(dtype)[2][0]
    w = w[:, :2].copy()
    b = b[:2].copy()
    result = check_vjp(lambda x: linear.forward(x, w, b),
                       lambda x, dy: linear.backward(x, w, b, dy)[0], x, batched=False)
    assert result.status == "PASS", str(result)
    cx, cw, cb = _conv_data(dtype)
    result = check_vjp(lambda w: conv.conv2d(cx, w, cb, padding=1),
                       lambda w, dy: conv.conv2d_backward(cx, w, cb, dy, padding=1)[1], cw,
                       batched=False)
    assert result.status == "PASS", str(result)


def _conv_net(x, b):
    """A scalar of the conv weights: a closure over images and bias (for Hessians)."""
    def loss(w):
        return jnp.sum(jnp.tanh(conv.conv2d(x, w, b)) ** 2)
    return loss


@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.slow), "float64"])
def test_check_hessian_and_hvp_of_a_small_conv_net_closing_over_its_images(dtype):
    x, w, b = _conv_data(dtype)
    x, w = x[:1, :1, :4, :4].copy(), w[:2, :1, :2, :2].copy()
    b = b[:2].copy()
    loss = _conv_net(x, b)
    flat, unravel = ravel_pytree(w)

    def hessian(w):  # the reference's own Hessian, traced on the user's side: a correct one
        return jax.hessian(lambda p: loss(unravel(p)))(ravel_pytree(w)[0])
    result = check_hessian(loss, hessian, w, fd=True)
    assert result.status == "PASS", str(result)
    v = np.random.default_rng(1).normal(size=w.shape).astype(dtype)

    def hvp(w, v):
        return jax.jvp(jax.grad(loss), (w,), (v,))[1]
    result = check_hvp(loss, hvp, w, v, batched=False)
    assert result.status == "PASS", str(result)

    def hvp_doubled(w, v):
        return 2.0 * hvp(w, v)
    assert check_hvp(loss, hvp_doubled, w, v, batched=False).status == "FAIL"


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_module_level_numpy_scalar_is_recast_too(dtype):
    x = np.random.default_rng(2).normal(size=8).astype(dtype)
    def f(x):
        return ROOT2 * jnp.sin(x)

    def f_vjp(x, g):  # with x64 on, float32 * ROOT2 is float64: the primal's dtype back
        return (ROOT2 * jnp.cos(x) * g).astype(x.dtype)
    result = check_vjp(f, f_vjp, x)
    assert result.status == "PASS", str(result)
    assert result.tensors[0].dtype == dtype
    planted = check_vjp(f, lambda x, g: jnp.cos(x) * g, x)
    assert planted.status == "FAIL", str(planted)


ROOT2 = np.sqrt(2.0)  # a numpy float64 scalar, captured as a global


def test_random_bits_inside_the_function_keep_their_meaning_when_recast():
    key = jax.random.key(0)

    def dropout_like(x):  # jax.random bitcasts uint32 bits to a float32 uniform
        return x * jax.random.uniform(key, x.shape, x.dtype)

    def vjp(x, g):
        return g * jax.random.uniform(key, x.shape, x.dtype)
    x = np.linspace(-1.0, 1.0, 6).astype(np.float32)
    assert check_vjp(dropout_like, vjp, x, batched=False).status == "PASS"


# --- float32: no further from the float64 truth than TRUTH_RATIO x autodiff ------------------

FLOAT32_BUGS = [e for e in corpus.BUGGY if e.name in ("gelu_rounded_constant", "dgamma_0.2%")]


@pytest.mark.parametrize("entry", FLOAT32_BUGS, ids=lambda e: e.name)
def test_float32_bugs_inside_the_widened_band_fail_against_the_truth(entry):
    result = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, 0, "float32"),
                       batched=False)
    assert result.status == "FAIL", str(result)
    (t,) = [t for t in result.tensors if t.status == "FAIL"]
    assert t.name == entry.wrong
    assert f"{entry.wrong}: against the float64 truth" in str(result)
    if entry.name == "gelu_rounded_constant":  # 0.03 % off: within float32's row in float64
        assert t.truth_yours > cmp.TRUTH_RATIO * t.truth_autodiff
        for words in (f"yours is {t.truth_yours:.2e}", f"autodiff {t.truth_autodiff:.2e}"):
            assert words in str(result)
    else:  # 0.2 % off, within TRUTH_RATIO of a float32 autodiff 3.5 digits off the truth
        assert t.truth_yours < cmp.TRUTH_RATIO * t.truth_autodiff
        assert f"yours run in float64 is {t.derivation_float64:.2e} off" in str(result)
        assert t.derivation_float64 > 1e-3


def test_truth_ratio_floors_autodiff_at_one_rounding():
    u = cmp.unit_roundoff("float32")
    assert cmp.truth_ratio(5 * u, 0.0, "float32") == pytest.approx(5.0)
    assert cmp.truth_ratio(8e-6, 1e-7, "float32") == pytest.approx(80.0)


# --- integer primals: what yours returns there is named, never silently dropped ---------------

def _scaled(x, w):
    return x * w.astype(x.dtype)


def test_a_derivative_returned_for_an_integer_primal_is_named_not_judged():
    x, w = np.linspace(-1.0, 1.0, 6), np.arange(6, dtype=np.int32)
    wrong = check_vjp(_scaled, lambda x, w, g: (g * w, 1000.0 * g * x), x, w)
    assert wrong.status == "PASS", str(wrong)  # not judged: an integer has no derivative
    (note,) = [n for n in wrong.notes if "integer primal w" in n]
    assert "(int32): not judged; it is nonzero" in note
    zeros = check_vjp(_scaled, lambda x, w, g: (g * w, jnp.zeros(6)), x, w)
    assert any("integer primal w (int32): not judged; it is zeros" in n for n in zeros.notes)
    none = check_vjp(_scaled, lambda x, w, g: (g * w, None), x, w)
    assert not any("integer primal" in n for n in none.notes)


def test_all_integer_primals_are_named_with_their_dtypes():
    with pytest.raises(ValueError, match=r"primal 0 \(k\) is int32, primal 1 \(n\) is int64"):
        check_vjp(lambda k, n: k * n, lambda k, n, g: (None, None),
                  np.arange(3, dtype=np.int32), np.arange(3, dtype=np.int64), names=("k", "n"))


# --- determinism: bitwise by default, nondet_tol= for a kernel with atomic adds -----------------

_NOISE = np.random.default_rng(0)


def _noisy(d):  # host side: what an atomic-add reduction does, 1e-9 of the tensor's scale
    d = np.asarray(d)
    return (d + 1e-9 * np.max(np.abs(d)) * _NOISE.standard_normal(d.shape)).astype(d.dtype)


def _sin_vjp_with_run_to_run_noise(x, g):
    d = jnp.cos(x) * g
    return jax.pure_callback(_noisy, jax.ShapeDtypeStruct(d.shape, d.dtype), d)


def test_run_to_run_noise_fails_bitwise_and_passes_under_nondet_tol():
    x = np.random.default_rng(3).normal(size=64).astype(np.float32)
    strict = check_vjp(jnp.sin, _sin_vjp_with_run_to_run_noise, x, batched=False)
    assert strict.status == "FAIL", str(strict)
    (det,) = [c for c in strict.checks if c.name == "determinism"]
    assert det.status == "FAIL" and "allowed bitwise (nondet_tol=0)" in det.detail
    loose = check_vjp(jnp.sin, _sin_vjp_with_run_to_run_noise, x, batched=False,
                      nondet_tol=1e-6)
    assert loose.status == "PASS", str(loose)
    (det,) = [c for c in loose.checks if c.name == "determinism"]
    measured = float(det.detail.split("difference ")[1].split(" ")[0])
    assert 1e-10 < measured < 1e-8 and "<= nondet_tol 1.0e-06" in str(loose)
    with pytest.raises(ValueError, match="nondet_tol must be a non-negative number"):
        check_vjp(jnp.sin, _sin_vjp_with_run_to_run_noise, x, nondet_tol=-1.0)


# --- complex primals and outputs, under JAX's convention for complex VJPs -----------------------

@pytest.mark.parametrize("dtype", ["complex64", pytest.param("complex128",
                                                             marks=pytest.mark.slow)])
def test_complex_vjps_holomorphic_and_not_pass_and_a_conjugation_bug_fails(dtype):
    rng = np.random.default_rng(4)
    z, w, c = ((rng.normal(size=5) + 1j * rng.normal(size=5)).astype(dtype) for _ in range(3))
    opts = dict(batched=False, cotangent=c)

    def holomorphic(z):
        return jnp.sin(z) * w

    def not_holomorphic(z):
        return jnp.conj(z) * w
    cases = [(holomorphic, lambda z, c: c * jnp.cos(z) * w),  # JAX: c·f'(z)
             (not_holomorphic, lambda z, c: jnp.conj(c * w))]
    for fun, vjp in cases:
        result = check_vjp(fun, vjp, z, **opts)
        assert result.status == "PASS", str(result)
        assert any("(real, imaginary) pairs" in n for n in result.notes)
        bug = check_vjp(fun, lambda z, c, vjp=vjp: jnp.conj(vjp(z, c)), z, **opts)
        assert bug.status == "FAIL", str(bug)
    energy = lambda z: jnp.sum(jnp.abs(z) ** 2)  # noqa: E731 (real-valued, not holomorphic)
    assert check_grad(energy, lambda z: 2 * jnp.conj(z), z, batched=False).status == "PASS"
    assert check_grad(energy, lambda z: 2 * z, z, batched=False).status == "FAIL"
