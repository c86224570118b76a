"""The checker's contract: any pytree, clear errors, kinks, extra checks, the report.

Each behaviour has a test that can fail: a planted bug of the kind the check exists for.
The corpus sweep (correct, ill-conditioned and buggy layers over seeds) is in
test_checker_corpus.py; the global-config tests that need a fresh interpreter are at
the end of this file.
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.custom_batching import custom_vmap

from suite import (
    CheckResult,
    check_custom_vjp,
    check_grad,
    check_hessian,
    check_hvp,
    check_vjp,
)
from suite import compare as cmp
from suite.testing import assert_grad, assert_vjp
from suite.tests import checker_corpus as corpus

RNG = np.random.default_rng(0)
FAST = dict(batched=False)  # the batched check compiles yours under vmap: tested on its own


def _ln(seed=0, dtype="float64"):
    return corpus.primals(corpus.CORRECT[0], seed, dtype)


# --- pytrees, integers, dtypes --------------------------------------------------------------

def test_dict_params_are_named_by_argument_and_path():
    result = check_vjp(corpus.layer_norm, corpus.layer_norm_vjp, *_ln(), **FAST)
    assert result.status == "PASS", str(result)
    assert [t.name for t in result.tensors] == ["x", "params['beta']", "params['gamma']"]
    text = str(result)
    for words in ("yours", "autodiff", "finite differences", "worst element params['gamma']["):
        assert words in text


def test_a_planted_bug_names_the_tensor_its_worst_element_and_the_three_values():
    x, params = _ln()

    def gamma_without_xhat(x, params, dy):
        dx, dp = corpus.layer_norm_vjp(x, params, dy)
        return dx, {"gamma": jnp.sum(dy, axis=0), "beta": dp["beta"]}
    result = check_vjp(corpus.layer_norm, gamma_without_xhat, x, params, **FAST)
    assert result.status == "FAIL"
    bad = [t for t in result.tensors if t.status == "FAIL"]
    assert [t.name for t in bad] == ["params['gamma']"]
    t = bad[0]
    assert t.finite_differences == pytest.approx(t.autodiff, rel=1e-6)
    assert t.yours != pytest.approx(t.autodiff, rel=1e-3)
    assert f"worst element params['gamma'][{t.worst_index[0]}]: yours" in str(result)


def test_tuple_outputs_and_integer_primals():
    result = check_vjp(corpus.two_outputs, corpus.two_outputs_vjp,
                       *corpus.two_inputs(RNG, "float64"), **FAST)
    assert result.status == "PASS", str(result)
    logits, labels = corpus.ce_inputs(RNG, "float64")
    result = check_vjp(corpus.cross_entropy, corpus.cross_entropy_vjp, logits, labels, **FAST)
    assert result.status == "PASS", str(result)
    assert [t.name for t in result.tensors] == ["logits"]  # the labels are a constant


def test_a_bare_value_is_accepted_for_a_single_primal():
    x = RNG.normal(size=(3, 4))
    for vjp in (corpus.exp10_vjp, lambda x, g: (corpus.exp10_vjp(x, g),)):
        assert check_vjp(corpus.exp10, vjp, x, **FAST).status == "PASS"


def test_none_for_a_floating_primal_is_taken_as_zeros_and_judged():
    x, w = RNG.normal(size=(4, 3)), RNG.normal(size=(3, 5))
    result = check_vjp(corpus.two_outputs, lambda x, w, cts: (None, x.T @ cts[0]), x, w, **FAST)
    assert result.status == "FAIL" and "returned None for x: taken as zeros" in str(result)


def test_float32_is_judged_in_float32_and_against_the_float64_truth():
    result = check_vjp(corpus.attention, corpus.attention_vjp,
                       *corpus.primals(corpus.CORRECT[1], 0, "float32"), **FAST)
    assert result.status == "PASS" and result.dtype == "float32"
    for t in result.tensors:
        assert t.tolerance == pytest.approx(1e-5 * t.widening)
        assert 0 < t.truth_yours < 1e-5 and 0 < t.truth_autodiff < 1e-5  # vs float64 truth
        assert t.autodiff_float64 is not None


def test_a_float64_cotangent_for_float32_inputs_is_flagged():
    x = RNG.normal(size=3).astype(np.float32)
    result = check_vjp(lambda x: 2 * x, lambda x, g: np.float64(2.0) * g, x, **FAST)
    assert result.status == "FAIL"
    assert "output dtype: x is float64, its primal is float32" in str(result)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16])
def test_half_precision_has_its_own_row_and_still_catches_a_transpose(dtype):
    def half(entry):
        return [np.asarray(a).astype(dtype) for a in corpus.primals(entry, 0, "float64")]
    good = check_vjp(corpus.dense, corpus.dense_vjp, *half(corpus.CORRECT[-1]), **FAST)
    assert good.status == "PASS", str(good)
    assert good.tensors[0].tolerance >= cmp.tolerance(np.dtype(dtype).name).normwise
    bad = check_vjp(corpus.dense, corpus.dense_vjp_transposed, *half(corpus.BUGGY[0]), **FAST)
    assert bad.status == "FAIL" and bad.tensors[0].status == "FAIL"


# --- clear errors -------------------------------------------------------------------------------

def test_a_wrong_structure_is_an_error_showing_expected_and_got():
    x, params = _ln()
    result = check_vjp(corpus.layer_norm, lambda x, p, dy: (dy, {"g": p["gamma"]}), x, params,
                       **FAST)
    assert result.status == "ERROR"
    assert ("expected: (x: float64[6, 16], params: {'beta': float64[16], "
            "'gamma': float64[16]})") in result.message
    assert "got:      (float64[6, 16], {'g': float64[16]})" in result.message


def test_a_wrong_shape_is_an_error_naming_the_tensor():
    x, w = RNG.normal(size=(4, 3)), RNG.normal(size=(3, 5))
    result = check_vjp(corpus.two_outputs, lambda x, w, cts: (cts[0] @ w.T, x.T @ cts[0][:, :2]),
                       x, w, **FAST)
    assert result.status == "ERROR" and "w: shape [3, 2], expected [3, 5]" in result.message


def test_a_crash_in_yours_is_an_error_with_the_line():
    result = check_vjp(corpus.exp10, lambda x, g: g @ jnp.ones((5, 5)), RNG.normal(size=(3, 4)),
                       **FAST)
    assert result.status == "ERROR" and "TypeError" in result.message
    assert "test_checker.py" in result.message


@pytest.mark.parametrize("call, match", [
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.ones((3, 4)), cotangent=np.ones((4, 3))),
     r"cotangent must match fun's output: expected float64\[3, 4\], got float64\[4, 3\]"),
    (lambda: check_vjp(corpus.exp10, "vjp", np.ones(3)), "vjp must be callable"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, "x"), r"primal 0 \(x\) must be an array"),
    (lambda: check_hessian(jnp.sum, lambda x: x, np.ones(2, complex)),
     "complex primals are checked by check_vjp, check_custom_vjp and check_grad"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp), "at least one primal"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.arange(3)), "no floating-point primal"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.ones(3), mode="quick"), "mode"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.ones(3), tol=1), "unknown option 'tol'"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.ones(3), seed=0.5), "seed"),
    (lambda: check_vjp(corpus.exp10, corpus.exp10_vjp, np.ones(3), names=("a", "b")), "names"),
    (lambda: check_grad(corpus.exp10, corpus.exp10_vjp, np.ones(3)), "fun must return a scalar"),
    (lambda: check_custom_vjp(corpus.exp10, np.ones(3)), "fun must be a jax.custom_vjp"),
    (lambda: check_hvp(jnp.sum, lambda x, v: v, np.ones(3), np.ones(2)), "v must be shaped like x"),
])
def test_malformed_arguments_raise_value_errors_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- kinks ----------------------------------------------------------------------------------------

def relu(x):
    return jnp.maximum(x, 0.0)


def relu_vjp_step_at_zero(x, g):  # convention relu'(0) = 1; JAX splits the tie (1/2)
    return g * (x >= 0)


def _at_kink():
    x = RNG.normal(size=8)
    x[[2, 5]] = 0.0
    return x


def test_a_kink_is_named_with_both_slopes_and_the_one_yours_matched():
    result = check_vjp(relu, relu_vjp_step_at_zero, _at_kink(), **FAST)
    assert result.status == "KINK", str(result)
    t = result.tensors[0]
    assert [k.index for k in t.kinks] == [(2,), (5,)]
    for k in t.kinks:
        assert k.left == pytest.approx(0.0, abs=1e-8) and k.matched == "right"
        assert k.right == pytest.approx(k.yours, rel=1e-8)
        assert k.autodiff == pytest.approx(k.yours / 2)
    assert "kink at x[2]: one-sided finite differences left" in str(result)
    assert "matched the right-sided slope" in str(result)


def test_elements_away_from_the_kink_are_still_judged():
    def also_wrong_at_0(x, g):
        return relu_vjp_step_at_zero(x, g) * jnp.where(jnp.arange(8) == 0, 1.5, 1.0)
    x = _at_kink()
    x[0] = 1.0
    result = check_vjp(relu, also_wrong_at_0, x, **FAST)
    assert result.status == "FAIL" and result.tensors[0].worst_index == (0,), str(result)
    assert len(result.tensors[0].kinks) == 2


def test_matching_neither_slope_at_a_kink_fails():
    result = check_vjp(relu, lambda x, g: g * jnp.where(x == 0, 3.0, (x > 0) * 1.0), _at_kink(),
                       **FAST)
    assert result.status == "FAIL" and "matches neither one-sided slope" in str(result)


# --- extra checks ---------------------------------------------------------------------------------

@custom_vmap
def _double(g):
    return 2.0 * g


@_double.def_vmap
def _double_batched_wrong(axis_size, in_batched, g):  # a wrong batching rule: 3 instead of 2
    return 3.0 * g, in_batched[0]


def test_batched_vmap_over_cotangents_must_equal_the_loop():
    x = RNG.normal(size=4)
    assert check_vjp(lambda x: 2.0 * x, lambda x, g: 2.0 * g, x).status == "PASS"
    result = check_vjp(lambda x: 2.0 * x, lambda x, g: _double(g), x)
    assert result.status == "FAIL" and result.tensors[0].status == "PASS"
    assert "batched: x: under vmap over cotangents, batch entry 0 differs" in str(result)


def test_determinism_and_zero_cotangent():
    calls = []

    def drifting(x, g):  # a stateful backward: a different constant every call
        calls.append(1)
        return 2.0 * g + 1e-3 * len(calls)
    result = check_vjp(lambda x: 2.0 * x, drifting, RNG.normal(size=3), jit=False)
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["determinism"] == "FAIL" and statuses["zero cotangent"] == "FAIL"
    assert "a zero cotangent gives" in str(result) and "two runs differ" in str(result)


def test_code_that_cannot_be_traced_is_run_eagerly():
    def python_branch(x, g):
        return 2.0 * g if float(jnp.sum(g)) > -1e300 else g
    result = check_vjp(lambda x: 2.0 * x, python_branch, RNG.normal(size=3))
    assert result.status == "PASS" and "run eagerly" in str(result)


def test_fast_mode_passes_on_a_projection_and_falls_back_to_the_full_check():
    x, w, b = corpus.dense_inputs(RNG, "float64")
    fast = check_vjp(corpus.dense, corpus.dense_vjp, x, w, b, mode="fast")
    assert fast.status == "PASS" and fast.mode == "fast" and "uᵀJv" in str(fast)
    bad = check_vjp(corpus.dense, corpus.dense_vjp_transposed, x, w, b, mode="fast")
    assert bad.status == "FAIL" and bad.mode == "full"
    assert "fast mode's projection uᵀJv disagreed" in str(bad)


# --- ill-conditioning: the fair tolerance ---------------------------------------------------------

def test_saturated_attention_passes_only_because_the_tolerance_is_widened_and_says_so():
    entry = corpus.ILL[0]
    result = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, 0, "float64"), **FAST)
    assert result.status == "PASS", str(result)
    q = result.tensors[0]
    assert q.normwise > cmp.tolerance("float64").normwise  # the table alone would FAIL it
    assert q.widening > 10 and "widened x" in str(result)
    # the widening comes from autodiff, not from yours: a bug is still caught
    bad = check_vjp(entry.fun, corpus.attention_vjp_no_scale,
                    *corpus.primals(entry, 0, "float64"), **FAST)
    assert bad.status == "FAIL" and bad.tensors[0].status == "FAIL"


def test_float32_reports_what_it_cannot_resolve_instead_of_failing():
    entry = corpus.ILL[0]
    result = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, 0, "float32"), **FAST)
    assert result.status == "PASS"
    unresolved = [t.name for t in result.tensors if not t.resolved]
    assert unresolved == ["q", "k"] and "check it in float64" in str(result)


# --- the other checks -----------------------------------------------------------------------------

def _loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)


def _loss_grad(w, x):
    t = jnp.tanh(x @ w)
    dz = 2 * t * (1 - t**2)
    return x.T @ dz, dz @ w.T


def test_check_grad():
    w, x = RNG.normal(size=(3, 2)), RNG.normal(size=(5, 3))
    assert_grad(_loss, _loss_grad, w, x)
    result = check_grad(_loss, lambda w, x: (_loss_grad(w, x)[0] * 2, _loss_grad(w, x)[1]), w, x)
    assert result.status == "FAIL" and [t.status for t in result.tensors] == ["FAIL", "PASS"]


@jax.custom_vjp
def softplus(x):
    return jnp.logaddexp(x, 0.0)


def _softplus_fwd(x):
    return softplus(x), x


softplus.defvjp(_softplus_fwd, lambda x, g: (g * jax.nn.sigmoid(x),))


@jax.custom_vjp
def softplus_buggy(x):
    return jnp.logaddexp(x, 0.0)


softplus_buggy.defvjp(lambda x: (softplus_buggy(x), x), lambda x, g: (g * jax.nn.sigmoid(-x),))


def test_check_custom_vjp_judges_the_rule_against_autodiff_of_the_primal_function():
    x = RNG.normal(size=(5,))
    assert check_custom_vjp(softplus, x).status == "PASS"
    result = check_custom_vjp(softplus_buggy, x)
    assert result.status == "FAIL" and result.name == "softplus_buggy"


def _f(p):
    return jnp.sum(jnp.sin(p["a"]) * p["b"] ** 2)


def _hessian(p, bug=1.0):
    a, b = p["a"], p["b"]
    hab = jnp.diag(2 * b * jnp.cos(a))
    return jnp.block([[jnp.diag(-jnp.sin(a) * b**2), hab], [bug * hab, jnp.diag(2 * jnp.sin(a))]])


def _hvp(p, v):
    a, b = p["a"], p["b"]
    return {"a": -jnp.sin(a) * b**2 * v["a"] + 2 * b * jnp.cos(a) * v["b"],
            "b": 2 * b * jnp.cos(a) * v["a"] + 2 * jnp.sin(a) * v["b"]}


def test_check_hessian_names_both_parameters_of_the_worst_element():
    p = {"a": RNG.normal(size=3), "b": RNG.normal(size=3)}
    assert check_hessian(_f, _hessian, p).status == "PASS"
    result = check_hessian(_f, lambda p: _hessian(p, bug=-1.0), p)
    assert result.status == "FAIL"
    assert "∂²f / ∂p['b'][" in str(result) and "∂p['a'][" in str(result)


def test_check_hvp():
    p = {"a": RNG.normal(size=3), "b": RNG.normal(size=3)}
    v = {"a": RNG.normal(size=3), "b": RNG.normal(size=3)}
    assert check_hvp(_f, _hvp, p, v).status == "PASS"
    result = check_hvp(_f, lambda p, v: {"a": _hvp(p, v)["a"], "b": -_hvp(p, v)["b"]}, p, v)
    assert result.status == "FAIL" and [t.status for t in result.tensors] == ["PASS", "FAIL"]


# --- the result object ----------------------------------------------------------------------------

def test_to_frame_assert_passed_and_the_pytest_helper():
    x, params = _ln()
    result = check_vjp(corpus.layer_norm, corpus.layer_norm_vjp_dropped_term, x, params, **FAST)
    frame = result.to_frame()
    assert list(frame["tensor"]) == ["x", "params['beta']", "params['gamma']"]
    assert list(frame["status"]) == ["FAIL", "PASS", "PASS"]
    for column in ("normwise", "tolerance", "yours", "autodiff", "finite_differences"):
        assert column in frame.columns
    with pytest.raises(AssertionError, match=r"FAIL  x  float64\[6, 16\]"):
        result.assert_passed()
    with pytest.raises(AssertionError, match="worst element x"):
        assert_vjp(corpus.layer_norm, corpus.layer_norm_vjp_dropped_term, x, params, **FAST)
    assert isinstance(assert_vjp(corpus.layer_norm, corpus.layer_norm_vjp, x, params, **FAST),
                      CheckResult)
    row = result.to_row()
    assert row.status == "FAIL" and row.leaf == "x" and row.case == "layer_norm"


def test_the_global_config_is_unchanged_after_every_kind_of_call():
    before = (jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion)
    x32 = RNG.normal(size=(3, 4)).astype(np.float32)
    check_vjp(corpus.exp10, corpus.exp10_vjp, x32, **FAST)
    check_vjp(corpus.exp10, corpus.exp10_vjp, x32.astype(jnp.bfloat16), **FAST)
    check_vjp(corpus.exp10, lambda x, g: (g,), x32, **FAST)  # a FAIL
    check_vjp(corpus.exp10, lambda x, g: (g, g), x32, **FAST)  # an ERROR
    assert (jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion) == before


# --- a fresh interpreter: default JAX config, no suite.configure() -------------------------

_FRESH = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    before = (jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion)
    assert before == (False, "allow"), before
    from suite import check_vjp
    from suite.tests import checker_corpus as c

    def layer_norm(x, gamma, beta):  # ordinary user code: implicit broadcasting
        mu = x.mean(-1, keepdims=True)
        xhat = (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
        return xhat * gamma + beta

    def layer_norm_vjp(x, gamma, beta, dy):
        dx, dp = c.layer_norm_vjp(x, {"gamma": gamma, "beta": beta}, dy)
        return dx, dp["gamma"], dp["beta"]

    x, p = c.primals(c.CORRECT[0], 0, "float64")
    out = []
    for dtype in ("float64", "float32"):
        args = [np.asarray(a, dtype) for a in (x, p["gamma"], p["beta"])]
        r = check_vjp(layer_norm, layer_norm_vjp, *args, batched=False)
        out.append((r.status.value, r.dtype, r.tensors[0].tolerance))
        assert (jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion) == before
    print(out)
""")


def test_works_without_configure_in_a_default_jax_and_leaves_it_default():
    done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # float64 numpy inputs are checked in float64 although x64 is off globally
    assert "('PASS', 'float64', 1e-12)" in done.stdout and "('PASS', 'float32'" in done.stdout
