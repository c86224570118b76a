"""check_steps, mark, adjoint; check_jvp, check_custom_jvp; the transform audit.

Every expectation is known by construction: a planted bug's step, line and class come
from the corpus (suite/tests/steps_corpus.py), never from the checker; the audit's rules
are built to pass, raise or be wrong under a given transform. make test runs a reduced
corpus; ``-m slow`` runs all of it, every correct layer in both dtypes over three seeds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import suite
from suite import adjoint, check_custom_jvp, check_custom_vjp, check_jvp, check_steps, mark
from suite.results import Status
from suite.tests import steps_corpus as corpus

BY_ID = {b.id: b for b in corpus.BUGS}


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return str(tmp_path_factory.mktemp("steps_corpus"))


# --- mark / adjoint outside a check, and misuse -------------------------------------------

def test_mark_and_adjoint_are_the_identity_outside_a_check():
    x = np.arange(3.0)
    assert mark("a", x) is x and adjoint("a", x) is x
    assert suite.check.mark is mark and suite.check_steps is check_steps


def _tiny_forward(x):
    h = mark("h", jnp.sin(x))
    return mark("y", h * x)


def _tiny_backward(x, dy):
    h = jnp.sin(x)
    dh = adjoint("h", adjoint("y", dy) * x)
    return dh * jnp.cos(x) + dy * h


def test_a_jitted_forward_and_backward_traced_before_are_still_judged():
    fwd, bwd = jax.jit(_tiny_forward), jax.jit(_tiny_backward)
    x = np.linspace(0.1, 1.0, 4)
    fwd(x), bwd(x, x)  # cached programs without marks must not be replayed
    r = check_steps(fwd, bwd, x)
    assert r.passed and [s.name for s in r.steps] == ["y", "h"]


def test_adjoint_without_mark_is_a_value_error_naming_it():
    def backward(x, dy):
        adjoint("nope", dy)
        return _tiny_backward(x, dy)
    with pytest.raises(ValueError, match="adjoint\\('nope'\\).*no matching mark"):
        check_steps(_tiny_forward, backward, np.linspace(0.1, 1.0, 4))


def test_mark_under_scan_is_a_value_error_saying_so():
    def forward(x):
        def body(c, xi):
            return c, mark("h", jnp.tanh(xi))
        return jax.lax.scan(body, 0.0, x)[1]

    def backward(x, dy):
        return adjoint("h", dy) * (1 - jnp.tanh(x) ** 2)
    with pytest.raises(ValueError, match="mark\\('h'\\).*inside a traced loop"):
        check_steps(forward, backward, np.linspace(0.1, 1.0, 4))


def test_unknown_mark_is_not_judged_and_a_correct_tiny_backward_passes():
    def backward(x, dy):  # states no adjoint for "y"
        h = jnp.sin(x)
        return adjoint("h", dy * x) * jnp.cos(x) + dy * h
    r = check_steps(_tiny_forward, backward, np.linspace(0.1, 1.0, 4))
    assert r.passed and [s.name for s in r.steps] == ["h"] and r.not_judged == ["y"]
    assert "not judged" in str(r) and r.first_wrong is None


def test_a_planted_sign_in_the_tiny_backward_is_caught_with_its_line():
    def backward(x, dy):
        h = jnp.sin(x)
        dh = adjoint("h", -adjoint("y", dy) * x)  # BUG: sign
        return dh * jnp.cos(x) + dy * h
    r = check_steps(_tiny_forward, backward, np.linspace(0.1, 1.0, 4))
    first = r.first_wrong
    assert r.status is Status.FAIL and first.name == "h"
    assert first.line.endswith(f"test_steps.py:{backward.__code__.co_firstlineno + 2}")
    assert first.diagnosis == "consistent with sign flipped"
    assert str(r).splitlines()[1].startswith("  first wrong step: h at ")


# --- the planted corpus ---------------------------------------------------------------------

def _assert_found(bug, directory):
    found = corpus.run_bug(bug, directory=directory)
    assert found["status"] == "FAIL", found
    assert found["step_ok"], found
    assert found["diag_ok"], found


@pytest.mark.parametrize("bug_id", corpus.FAST_BUGS)
def test_reduced_corpus_first_wrong_step_line_and_diagnosis(bug_id, directory):
    _assert_found(BY_ID[bug_id], directory)


def test_correct_layer_norm_in_float32_has_no_fail_and_no_diagnosis(directory):
    got = corpus.run_correct("ln", np.float32, 0, directory)
    assert got["status"] == "PASS" and not got["failed"] and not got["diagnoses"], got


@pytest.mark.slow
@pytest.mark.parametrize("bug_id", [b.id for b in corpus.BUGS if b.id not in corpus.FAST_BUGS])
def test_corpus_first_wrong_step_line_and_diagnosis(bug_id, directory):
    _assert_found(BY_ID[bug_id], directory)


@pytest.mark.slow
@pytest.mark.parametrize("model", corpus.MODELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_layers_have_no_fail_and_no_diagnosis(model, dtype, seed, directory):
    got = corpus.run_correct(model, dtype, seed, directory)
    assert got["status"] == "PASS" and not got["failed"] and not got["diagnoses"], got
    assert not got["not_judged"], got


def test_the_corpus_plants_what_it_says():
    for bug in corpus.BUGS:
        src, line = corpus.planted_source(bug)
        assert src.splitlines()[line - 1].count(bug.new.splitlines()[0]) == 1, bug.id
        assert f'"{bug.step}"' in src.splitlines()[line - 1] or bug.step == "z", bug.id


# --- check_jvp and check_custom_jvp ---------------------------------------------------------

def _f(x, w):
    return jnp.tanh(x @ w), jnp.sum(x**2)


def _f_jvp(primals, tangents, *, bug=None):
    (x, w), (tx, tw) = primals, tangents
    z = jnp.tanh(x @ w)
    dz = (1 - z**2) * (tx @ w + x @ tw)
    ds = 2 * jnp.sum(x * tx)
    if bug == "sign":
        dz = (1 + z**2) * (tx @ w + x @ tw)
    if bug == "missing":
        dz = (1 - z**2) * (tx @ w)
    if bug == "half":
        ds = jnp.sum(x * tx)
    return _f(x, w), (dz, ds)


def _xw(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((4, 3)).astype(dtype),
            (0.5 * rng.standard_normal((3, 2))).astype(dtype))


@pytest.mark.parametrize("dtype", [pytest.param(np.float64, marks=pytest.mark.slow), np.float32])
def test_check_jvp_passes_a_correct_rule_in_both_dtypes(dtype):
    assert check_jvp(_f, _f_jvp, *_xw(dtype)).passed


@pytest.mark.parametrize("bug, tensor", [pytest.param("sign", "out[0]", marks=pytest.mark.slow),
                                         ("missing", "out[0]"),
                                         pytest.param("half", "out[1]", marks=pytest.mark.slow)])
def test_check_jvp_catches_planted_rules_naming_the_tensor(bug, tensor):
    r = check_jvp(_f, functools.partial(_f_jvp, bug=bug), *_xw(np.float64))
    assert r.status is Status.FAIL
    assert [t.name for t in r.tensors if t.status is Status.FAIL] == [tensor]


@jax.custom_jvp
def _logsumexp(x):
    return jnp.log(jnp.sum(jnp.exp(x)))


@_logsumexp.defjvp
def _logsumexp_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = _logsumexp(x)
    return y, jnp.sum(jnp.exp(x - y) * t)


@jax.custom_jvp
def _logsumexp_bad(x):
    return jnp.log(jnp.sum(jnp.exp(x)))


@_logsumexp_bad.defjvp
def _logsumexp_bad_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = _logsumexp_bad(x)
    return y, jnp.sum(jnp.exp(x) * t)  # BUG: softmax weights not normalised


@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)])
def test_check_custom_jvp_passes_a_correct_rule_and_catches_a_wrong_one(dtype):
    x = np.linspace(-1.0, 1.0, 5).astype(dtype)
    assert check_custom_jvp(_logsumexp, x).passed
    bad = check_custom_jvp(_logsumexp_bad, x)
    assert bad.status is Status.FAIL and bad.tensors[0].name == "out"


def test_check_custom_jvp_refuses_a_plain_function():
    with pytest.raises(ValueError, match="must be a jax.custom_jvp"):
        check_custom_jvp(jnp.sin, np.ones(2))


# --- the transform audit ---------------------------------------------------------------------

def _softplus(x):
    return jnp.log1p(jnp.exp(x))


@jax.custom_vjp
def _sp_good(x):
    return _softplus(x)


_sp_good.defvjp(lambda x: (_softplus(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))


@jax.custom_vjp
def _sp_sg(x):
    return _softplus(x)


_sp_sg.defvjp(lambda x: (_softplus(x), jax.lax.stop_gradient(jax.nn.sigmoid(x))),
              lambda s, g: (g * s,))


def _host_softmax_times(x, g):  # written for one example: normalises over the whole array
    e = np.exp(x - x.max())
    return (np.asarray(g)[..., None] * e / e.sum()).astype(x.dtype)


def _lse(x):
    return jnp.log(jnp.sum(jnp.exp(x), axis=-1))


@jax.custom_vjp
def _lse_vjp_callback(x):
    return _lse(x)


_lse_vjp_callback.defvjp(lambda x: (_lse(x), x), lambda x, g: (jax.pure_callback(
    _host_softmax_times, jax.ShapeDtypeStruct(x.shape, x.dtype), x, g,
    vmap_method="expand_dims"),))


@jax.custom_vjp
def _sp_host(x):
    return _softplus(x)


_sp_host.defvjp(lambda x: (_softplus(x), x),
                lambda x, g: (g / (1.0 + np.exp(-np.asarray(x))),))  # numpy: no jit

AUDITS = {  # rule -> {transform: verdict} known by construction
    "_sp_good": {"jit": "PASS", "vmap": "PASS", "checkpoint": "PASS", "grad of grad": "PASS",
                 "jax.hessian": "PASS", "jax.jvp": "RAISES", "jvp of vjp": "PASS"},
    "_sp_sg": {"jit": "PASS", "vmap": "PASS", "checkpoint": "PASS", "grad of grad": "WRONG",
               "jax.hessian": "WRONG", "jax.jvp": "RAISES", "jvp of vjp": "WRONG"},
    "_lse_vjp_callback": {"jit": "PASS", "vmap": "WRONG", "checkpoint": "PASS",
                     "grad of grad": "RAISES", "jax.hessian": "RAISES", "jax.jvp": "RAISES",
                     "jvp of vjp": "RAISES"},
    "_sp_host": {"jit": "RAISES", "vmap": "RAISES", "checkpoint": "RAISES",
                 "grad of grad": "RAISES", "jax.hessian": "RAISES", "jax.jvp": "RAISES",
                 "jvp of vjp": "RAISES"},
}


def _lse_host_tangent(x, t):  # written for one example: normalises over the whole array
    e = np.exp(x - x.max())
    return np.asarray((e / e.sum() * t).sum(axis=-1), x.dtype)


@jax.custom_jvp
def _lse_callback(x):
    return jnp.log(jnp.sum(jnp.exp(x)))


@_lse_callback.defjvp
def _lse_callback_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    tout = jax.pure_callback(_lse_host_tangent, jax.ShapeDtypeStruct((), x.dtype), x, t,
                             vmap_method="expand_dims")
    return _lse_callback(x), tout


AUDITS_JVP = {
    "_logsumexp": {"jit (jvp)": "PASS", "vmap (jvp)": "PASS", "checkpoint (jvp)": "PASS",
                   "vjp (transposed rule)": "PASS", "jax.hessian": "PASS"},
    "_lse_callback": {"jit (jvp)": "PASS", "vmap (jvp)": "WRONG", "checkpoint (jvp)": "PASS",
                      "vjp (transposed rule)": "RAISES", "jax.hessian": "RAISES"},
}


def _audit(name):
    x = np.linspace(-1.0, 1.0, 4)
    if name in AUDITS:
        return check_custom_vjp(globals()[name], x, audit=True)
    return check_custom_jvp(globals()[name], x, audit=True)


def test_audit_of_a_stop_gradient_rule_is_wrong_under_hessian_and_jvp_raises():
    r = _audit("_sp_sg")
    assert {a.transform: a.verdict for a in r.audit} == AUDITS["_sp_sg"]
    assert r.status is Status.FAIL and all(t.status is Status.PASS for t in r.tensors)
    assert "raise by design" in str(r) and "audit jax.hessian" in r.to_frame().tensor.tolist()
    jvp_row = next(a for a in r.audit if a.transform == "jax.jvp")
    assert "custom_vjp" in jvp_row.detail


@pytest.mark.slow
@pytest.mark.parametrize("name", ["_sp_good", "_lse_vjp_callback", "_sp_host", "_logsumexp",
                                  "_lse_callback"])
def test_audit_rows_are_known_by_construction(name):
    r = _audit(name)
    want = {**AUDITS, **AUDITS_JVP}[name]
    assert {a.transform: a.verdict for a in r.audit} == want, str(r)
    wrong = any(v == "WRONG" for v in want.values())
    assert (r.status is Status.FAIL) == wrong or r.status is Status.ERROR
