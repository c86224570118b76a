"""manual.rnn beyond the registry: forward against numpy, the exact meaning of a cut,
randomized truncation (exactly unbiased; its Monte-Carlo mean converging), planted BPTT
bugs, bad input.

The planted bugs use a plain numpy BPTT loop (``np_bptt``, sharing no code with
manual/ or with autodiff): without a bug it agrees with the autodiff oracle to float64
tolerance; with each classic mistake, the suite's comparison fails it.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import rnn
from suite import cases as registry
from suite import compare as cmp
from suite.cases import rnn as rnn_cases

T, N, D, H = 7, 3, 4, 5


@functools.lru_cache(maxsize=None)
def _inputs(t=T, n=N, d=D, h=H, dtype="float64", seed=0):
    return rnn_cases.builder(t, n, d, h)(jax.random.PRNGKey(seed), dtype)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


# --- an independent numpy BPTT, with switches for the classic mistakes ----------------

def np_forward(params, xs, h0):
    hs, h = [], np.asarray(h0)
    for x_t in np.asarray(xs):
        h = np.tanh(x_t @ params["w_xh"] + h @ params["w_hh"] + params["b"])
        hs.append(h)
    return np.stack(hs)


def np_bptt(params, xs, h0, dhs, *, omega=None, bug=None):
    """Textbook BPTT, one step at a time; omega[t] weights the adjoint into h_{t-1}."""
    params, xs, h0, dhs = _np((params, xs, h0, dhs))
    steps = len(xs)
    omega = np.ones(steps) if omega is None else np.asarray(omega, np.float64)
    if bug == "xi_one_step_early":      # the weight of step t applied at step t-1
        omega = np.append(omega[1:], 1.0)
    hs = np_forward(params, xs, h0)
    h_prev = np.concatenate([h0[None], hs[:-1]])
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dxs, g = np.zeros_like(xs), np.zeros_like(h0)
    for t in reversed(range(steps)):
        local = 1 - (h_prev[t] if bug == "tanh_prime_of_previous_state" else hs[t]) ** 2
        delta = (dhs[t] + (0 if bug == "no_recurrent_adjoint" else g)) * local
        if bug != "w_hh_last_step_only" or t == steps - 1:
            dparams["w_hh"] += h_prev[t].T @ delta
        dparams["w_xh"] += xs[t].T @ delta
        dparams["b"] += delta.sum(0)
        dxs[t] = delta @ params["w_xh"].T
        w = params["w_hh"] if bug == "w_hh_not_transposed" else params["w_hh"].T
        g = omega[t] * (delta @ w)
    return dparams, dxs, g


def np_cut_weights(steps, k, bug=None):
    t = np.arange(steps)
    shift = 1 if bug == "cut_one_step_late" else 0
    return np.where((t > shift) & ((t - shift) % k == 0), 0.0, 1.0)


@pytest.fixture(scope="module")
def full():
    case = registry.get("rnn/T7")
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, _np(jax.jit(case.reference)(inputs))


@pytest.fixture(scope="module")
def truncated():
    case = registry.get("rnn/T7-k3-xi0.5")
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, _np(jax.jit(case.reference)(inputs))


def _judge(out, reference):
    return cmp.compare(tuple(out), tuple(reference), "float64")


def test_numpy_bptt_agrees_with_autodiff(full, truncated):
    # the witness of the planted tests is itself right, full and truncated+randomized
    inputs, reference = full
    out = np_bptt(inputs["params"], inputs["xs"], inputs["h0"], inputs["dhs"])
    assert _judge(out, reference).passed
    inputs, reference = truncated
    omega = np_cut_weights(T, 3) * np.asarray(inputs["xi"])
    out = np_bptt(inputs["params"], inputs["xs"], inputs["h0"], inputs["dhs"], omega=omega)
    assert _judge(out, reference).passed


@pytest.mark.parametrize("bug", ["w_hh_last_step_only", "w_hh_not_transposed",
                                 "no_recurrent_adjoint", "tanh_prime_of_previous_state"])
def test_planted_bptt_bug_fails(full, bug):
    inputs, reference = full
    out = np_bptt(inputs["params"], inputs["xs"], inputs["h0"], inputs["dhs"], bug=bug)
    result = _judge(out, reference)
    assert not result.passed, f"{bug} was not caught"


@pytest.mark.parametrize("bug", ["cut_one_step_late", "xi_one_step_early"])
def test_planted_truncation_bug_fails(truncated, bug):
    inputs, reference = truncated
    omega = np_cut_weights(T, 3, bug) * np.asarray(inputs["xi"])
    out = np_bptt(inputs["params"], inputs["xs"], inputs["h0"], inputs["dhs"], omega=omega, bug=bug)
    assert not _judge(out, reference).passed, f"{bug} was not caught"


# --- forward and conventions -----------------------------------------------------------

def test_forward_matches_numpy_and_the_reference_forward():
    inp = _inputs()
    args = (inp["params"], inp["xs"], inp["h0"])
    xi = jnp.asarray([0.0, 2, 2, 0, 2, 0, 2])
    hs, ref = jax.jit(lambda *a: (rnn.forward(*a),
                                  rnn_cases.reference_forward(*a, truncation=3, xi=xi)))(*args)
    np.testing.assert_allclose(hs, np_forward(*_np(args)), rtol=1e-13, atol=1e-14)
    # the oracle's stop-gradient forward is a textbook forward and changes no value
    np.testing.assert_allclose(ref, hs, rtol=1e-13, atol=1e-14)


def test_dtype_is_preserved():
    # eval_shape traces the whole computation (every scan carry must keep its dtype)
    inp = _inputs(dtype="float32")
    xi = jax.ShapeDtypeStruct((T,), jnp.float32)
    assert jax.eval_shape(rnn.forward, inp["params"], inp["xs"], inp["h0"]).dtype == jnp.float32
    out = jax.eval_shape(lambda xi, *a: rnn.backward(*a, truncation=2, xi=xi),
                         xi, inp["params"], inp["xs"], inp["h0"], inp["dhs"])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))
    assert rnn.randomized_weights(jax.random.PRNGKey(0), T, 0.5).dtype == jnp.float32


def test_truncation_1_is_the_closed_form_without_recurrence():
    # every cut: delta_t = dh_t (1 - h_t^2) exactly, dW_hh = sum_t h_{t-1}^T delta_t
    inp = _inputs()
    params, xs, h0, dhs = _np((inp["params"], inp["xs"], inp["h0"], inp["dhs"]))
    hs = np_forward(params, xs, h0)
    delta = dhs * (1 - hs ** 2)
    h_prev = np.concatenate([h0[None], hs[:-1]])
    dparams, dxs, dh0 = rnn.backward(inp["params"], inp["xs"], inp["h0"], inp["dhs"], truncation=1)
    np.testing.assert_allclose(dparams["w_hh"], np.einsum("tnh,tnk->hk", h_prev, delta), rtol=1e-12)
    np.testing.assert_allclose(dxs, delta @ params["w_xh"].T, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dh0, delta[0] @ params["w_hh"].T, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_cut_stops_exactly_at_multiples_of_k(k):
    # only the last hidden state gets a cotangent: the gradient reaches x_t for t in the
    # last window [k*floor((T-1)/k), T) and nowhere before it
    inp = _inputs()
    dhs = jnp.zeros_like(inp["dhs"]).at[-1].set(inp["dhs"][-1])
    _, dxs, dh0 = rnn.backward(inp["params"], inp["xs"], inp["h0"], dhs, truncation=k)
    start = k * ((T - 1) // k)
    reached = np.abs(np.asarray(dxs)).sum(axis=(1, 2)) > 0
    assert reached.tolist() == [t >= start for t in range(T)]
    assert (np.abs(dh0).sum() > 0) == (start == 0)


def test_truncation_k_at_least_T_is_full_bptt_and_equals_its_mask_as_xi():
    inp = _inputs()
    args = (inp["params"], inp["xs"], inp["h0"], inp["dhs"])
    full = rnn.backward(*args)
    def identical(x, y):
        pairs = zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y), strict=True)
        return all(np.array_equal(a, b) for a, b in pairs)

    for k in (T, T + 5):
        assert identical(full, rnn.backward(*args, truncation=k))
    mask = jnp.asarray(np_cut_weights(T, 3))
    assert identical(rnn.backward(*args, truncation=3), rnn.backward(*args, xi=mask))


# --- randomized truncation --------------------------------------------------------------

def test_randomized_weights_are_0_or_1_over_pi_with_frequency_pi():
    pi, steps = 0.3, 20000
    xi = np.asarray(rnn.randomized_weights(jax.random.PRNGKey(0), steps, pi, dtype=jnp.float64))
    assert xi.dtype == np.float64 and set(np.unique(xi)) == {0.0, 1 / pi}
    kept = (xi > 0).mean()
    # binomial: the kept fraction is pi +- sqrt(pi (1 - pi) / steps); 5 standard errors
    assert abs(kept - pi) < 5 * np.sqrt(pi * (1 - pi) / steps)
    assert abs(xi.mean() - 1.0) < 5 * np.sqrt((1 - pi) / pi / steps)  # E xi = 1, Var = (1-pi)/pi


def test_registered_randomized_cases_draw_a_mix_of_cut_and_kept_steps():
    drawn = [(case, dtype) for case in registry.cases(family="rnn", tiers=("test", "slow"))
             if "pi" in case.sizes for dtype in case.dtypes]
    assert drawn
    for case, dtype in drawn:
        xi = np.asarray(case.build(jax.random.PRNGKey(case.seed), dtype)["xi"])
        assert (xi == 0).any() and (xi > 0).any(), f"{case.name} {dtype}: {xi}"


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


STEPS, PI, K = 5, 0.6, 4096


@pytest.fixture(scope="module")
def randomized():
    """Flat gradients for every xi of one batch, under a single compile.

    Rows: the 2^T patterns of kept/cut steps (weights 1/pi or 0), K draws of
    randomized_weights, the same K draws times pi (a biased estimator: weights 1 or 0),
    and all ones (full BPTT: multiplying by 1.0 is exact).
    """
    args = tuple(_inputs(t=STEPS, n=2, d=2, h=3)[k] for k in ("params", "xs", "h0", "dhs"))
    patterns = np.array(list(itertools.product([0.0, 1.0], repeat=STEPS)))
    keys = jax.random.split(jax.random.PRNGKey(42), K)
    draws = jax.vmap(lambda key: rnn.randomized_weights(key, STEPS, PI, dtype=jnp.float64))(keys)
    xis = jnp.concatenate([jnp.asarray(patterns / PI), draws, PI * draws, jnp.ones((1, STEPS))])
    grads = np.asarray(jax.jit(jax.vmap(lambda xi: _flat(rnn.backward(*args, xi=xi))))(xis))
    p = len(patterns)
    return dict(patterns=patterns, exact=grads[:p], mc=grads[p:p + K],
                biased=grads[p + K:p + 2 * K], full=grads[-1])


def test_randomized_truncation_is_exactly_unbiased(randomized):
    # E over all 2^T patterns of xi, each weighted by its probability, is full BPTT
    prob = np.prod(np.where(randomized["patterns"] > 0, PI, 1 - PI), axis=1)
    assert prob.sum() == pytest.approx(1.0, abs=1e-15)
    full = randomized["full"]
    expectation = prob @ randomized["exact"]
    assert np.linalg.norm(expectation - full) / np.linalg.norm(full) < 1e-13


def test_randomized_truncation_mean_over_keys_approaches_full_bptt(randomized):
    """Monte Carlo over K keys drawn by randomized_weights itself.

    Statistic: for each gradient coordinate j, z_j = (mean_K g_j - full_j) / (s_j / sqrt(K))
    with s_j the per-key sample standard deviation. For an unbiased estimator z_j is
    approximately standard normal (K = 4096, the weights are bounded by pi^-T ≈ 13), so we
    require max_j |z_j| < 5 over the ~50 random coordinates (chance of a false alarm
    ~ 3e-5). A biased estimator (weights 1 instead of 1/pi) gives z in the tens. The
    normwise error of the mean is also checked against its own 5-sigma bound
    5 sqrt(sum_j s_j^2 / K), at K = 256 and 4096: the bound, and the error with it,
    shrink like 1/sqrt(K).
    """
    grads, full = randomized["mc"], randomized["full"]
    mean, std = grads.mean(0), grads.std(0, ddof=1)
    # coordinates no xi reaches (e.g. dx at the last step) are deterministic: exact there
    random = std > 1e-9 * np.abs(full).max()
    assert 0 < random.sum() < random.size
    np.testing.assert_allclose(mean[~random], full[~random], rtol=1e-12, atol=1e-15)
    z = (mean[random] - full[random]) / (std[random] / np.sqrt(K))
    assert np.max(np.abs(z)) < 5.0, np.max(np.abs(z))
    for k in (256, K):
        err = np.linalg.norm(grads[:k].mean(0) - full)
        assert err < 5 * np.sqrt(np.sum(grads[:k].var(0, ddof=1)) / k), k
    # the same statistic does reject a biased estimator (xi in {0, 1} instead of {0, 1/pi})
    biased = randomized["biased"][:, random]
    z_biased = (biased.mean(0) - full[random]) / (biased.std(0, ddof=1) / np.sqrt(K))
    assert np.max(np.abs(z_biased)) > 5.0


# --- bad input --------------------------------------------------------------------------

def _good():
    inp = _inputs(t=3, n=2, d=4, h=5)
    return [inp["params"], inp["xs"], inp["h0"], inp["dhs"]]


def _with(params=None, **kw):
    args = _good()
    if params:
        args[0] = {**args[0], **params}
    for i, name in enumerate(("params", "xs", "h0", "dhs")):
        if name in kw:
            args[i] = jnp.asarray(kw[name])
    return args


@pytest.mark.parametrize("args, pattern", [
    (_with(params=dict(w_xh=np.ones((3, 5)))),
     r"params\['w_xh'\] must have shape \(D, H\) = \(4, 5\).*got \(3, 5\)"),
    (_with(params=dict(w_hh=np.ones((5, 4)))),
     r"params\['w_hh'\] must have shape \(H, H\) = \(5, 5\).*got \(5, 4\)"),
    (_with(params=dict(b=np.ones(4))),
     r"params\['b'\] must have shape \(H,\) = \(5,\).*got \(4,\)"),
    (_with(h0=np.ones((3, 5))),
     r"h0 must have shape \(N, H\) with N = xs.shape\[1\] = 2, got xs \(3, 2, 4\) and h0 \(3, 5\)"),
    (_with(dhs=np.ones((2, 2, 5))),
     r"dhs must have the shape of hs, \(T, N, H\) = \(3, 2, 5\), got \(2, 2, 5\)"),
    (_with(xs=np.ones((0, 2, 4)), dhs=np.ones((0, 2, 5))),
     r"xs must have at least one time step, got xs \(0, 2, 4\)"),
    (_with(xs=np.ones((2, 4))), r"xs must have rank 3, got shape \(2, 4\)"),
    (_with(h0=np.ones((2, 5), np.int32)), r"h0 must be a floating-point array"),
    (_with(dhs=np.ones((3, 2, 5), np.float32)), r"share one floating dtype, got .*dhs: float32"),
    ([{"w_xh": np.ones((4, 5)), "w_hh": np.ones((5, 5))}] + _good()[1:],
     r"params must be a dict with keys"),
])
def test_bad_input_is_a_value_error_naming_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        rnn.backward(*args)
    if "dhs" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            rnn.forward(*args[:3])


@pytest.mark.parametrize("kw, pattern", [
    (dict(truncation=0), r"truncation must be None or a positive int, got 0"),
    (dict(truncation=-2), r"truncation must be None or a positive int, got -2"),
    (dict(truncation=2.0), r"truncation must be None or a positive int, got 2.0 of type float"),
    (dict(truncation=True), r"truncation must be None or a positive int, got True"),
    (dict(xi=np.ones(4)), r"xi must have shape \(T,\) = \(3,\).*got \(4,\)"),
    (dict(xi=np.ones((3, 1))), r"xi must have rank 1"),
    (dict(xi=np.ones(3, np.float32)), r"xi must have the dtype of xs, float64, got float32"),
])
def test_bad_truncation_or_xi_is_a_value_error(kw, pattern):
    kw = {k: jnp.asarray(v) if k == "xi" else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=pattern):
        rnn.backward(*_good(), **kw)


@pytest.mark.parametrize("steps, pi, pattern", [
    (0, 0.5, r"steps must be a positive int, got 0"),
    (3, 0.0, r"pi must be in \(0, 1\], got 0.0"),
    (3, 1.5, r"pi must be in \(0, 1\], got 1.5"),
])
def test_bad_randomized_weights_arguments(steps, pi, pattern):
    with pytest.raises(ValueError, match=pattern):
        rnn.randomized_weights(jax.random.PRNGKey(0), steps, pi)


def test_bad_input_is_caught_at_trace_time_under_jit():
    params, xs, h0, dhs = _good()
    with pytest.raises(ValueError, match="dhs must have the shape"):
        jax.jit(rnn.backward)(params, xs, h0, dhs[:, :1])
    with pytest.raises(ValueError, match="truncation must be"):
        jax.jit(rnn.backward, static_argnames="truncation")(params, xs, h0, dhs, truncation=0)
