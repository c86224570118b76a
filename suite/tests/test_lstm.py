"""manual.lstm beyond the registry: forward against numpy (gate order i, f, g, o), the
exact position of a cut, randomized truncation exactly unbiased, planted BPTT bugs of
the LSTM kind (the cell adjoint's two paths), bad input.

As in test_rnn.py, the planted bugs live in a plain numpy BPTT loop (``np_bptt``): right,
it agrees with the autodiff oracle to float64 tolerance; with each mistake, the suite's
comparison fails it.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import lstm
from suite import cases as registry
from suite import compare as cmp
from suite.cases import lstm as lstm_cases

T, N, D, H = 7, 3, 4, 5


@functools.lru_cache(maxsize=None)
def _inputs(t=T, n=N, d=D, h=H, dtype="float64", seed=0):
    return lstm_cases.builder(t, n, d, h)(jax.random.PRNGKey(seed), dtype)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --- an independent numpy LSTM and BPTT, with switches for the classic mistakes -------

def np_forward(params, xs, h0, c0):
    """(hs, cs, gates) with gates (i, f, g, o) each (T, N, H), in that order along 4H."""
    h, c = np.asarray(h0), np.asarray(c0)
    hs, cs, gates = [], [], []
    for x_t in np.asarray(xs):
        z = x_t @ params["w_x"] + h @ params["w_h"] + params["b"]
        zi, zf, zg, zo = np.split(z, 4, axis=1)
        i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h), cs.append(c), gates.append((i, f, g, o))
    return np.stack(hs), np.stack(cs), [np.stack(g) for g in zip(*gates, strict=True)]


def np_bptt(params, xs, h0, c0, dhs, *, omega=None, bug=None):
    params, xs, h0, c0, dhs = _np((params, xs, h0, c0, dhs))
    steps = len(xs)
    omega = np.ones(steps) if omega is None else np.asarray(omega, np.float64)
    hs, cs, (i, f, g, o) = np_forward(params, xs, h0, c0)
    h_prev, c_prev = np.concatenate([h0[None], hs[:-1]]), np.concatenate([c0[None], cs[:-1]])
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dxs, gh, gc = np.zeros_like(xs), np.zeros_like(h0), np.zeros_like(c0)
    for t in reversed(range(steps)):
        dh = dhs[t] + gh
        tanh_c = np.tanh(cs[t])
        dc = gc + dh * o[t] * (1 if bug == "missing_tanh_prime_of_c" else 1 - tanh_c ** 2)
        parts = [dc * g[t] * i[t] * (1 - i[t]), dc * c_prev[t] * f[t] * (1 - f[t]),
                 dc * i[t] * (1 - g[t] ** 2), dh * tanh_c * o[t] * (1 - o[t])]
        if bug == "gate_order_ifog":
            parts = [parts[0], parts[1], parts[3], parts[2]]
        delta = np.concatenate(parts, axis=1)
        dparams["w_x"] += xs[t].T @ delta
        dparams["w_h"] += h_prev[t].T @ delta
        dparams["b"] += delta.sum(0)
        dxs[t] = delta @ params["w_x"].T
        gh = omega[t] * (delta @ params["w_h"].T)
        gc = {"cell_adjoint_not_carried": 0 * dc,
              "no_forget_gate_on_cell_adjoint": dc}.get(bug, dc * f[t])
        gc = gc if bug == "xi_on_h_only" else omega[t] * gc
    return dparams, dxs, gh, gc


def np_cut_weights(steps, k, bug=None):
    t = np.arange(steps)
    shift = 1 if bug == "cut_one_step_late" else 0
    return np.where((t > shift) & ((t - shift) % k == 0), 0.0, 1.0)


def _oracle(name):
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, _np(jax.jit(case.reference)(inputs))


@pytest.fixture(scope="module")
def full():
    return _oracle("lstm/T7")


@pytest.fixture(scope="module")
def truncated():
    return _oracle("lstm/T7-k3-xi0.5")


def _args(inputs):
    return inputs["params"], inputs["xs"], inputs["h0"], inputs["c0"], inputs["dhs"]


def _judge(out, reference):
    return cmp.compare(tuple(out), tuple(reference), "float64")


def test_numpy_bptt_agrees_with_autodiff(full, truncated):
    inputs, reference = full
    assert _judge(np_bptt(*_args(inputs)), reference).passed
    inputs, reference = truncated
    omega = np_cut_weights(T, 3) * np.asarray(inputs["xi"])
    assert _judge(np_bptt(*_args(inputs), omega=omega), reference).passed


@pytest.mark.parametrize("bug", ["missing_tanh_prime_of_c", "gate_order_ifog",
                                 "cell_adjoint_not_carried", "no_forget_gate_on_cell_adjoint"])
def test_planted_lstm_bug_fails(full, bug):
    inputs, reference = full
    assert not _judge(np_bptt(*_args(inputs), bug=bug), reference).passed, f"{bug} was not caught"


@pytest.mark.parametrize("bug", ["cut_one_step_late", "xi_on_h_only"])
def test_planted_truncation_bug_fails(truncated, bug):
    inputs, reference = truncated
    omega = np_cut_weights(T, 3, bug) * np.asarray(inputs["xi"])
    out = np_bptt(*_args(inputs), omega=omega, bug=bug)
    assert not _judge(out, reference).passed, f"{bug} was not caught"


# --- forward and conventions -----------------------------------------------------------

def test_forward_matches_numpy_gate_order_and_the_reference_forward():
    inp = _inputs()
    args = _args(inp)[:4]
    xi = jnp.asarray([0.0, 2, 2, 0, 2, 0, 2])
    (hs, cs), (ref_hs, ref_cs) = jax.jit(lambda *a: (
        lstm.forward(*a), lstm_cases.reference_forward(*a, truncation=3, xi=xi)))(*args)
    np_hs, np_cs, _ = np_forward(*_np(args))
    np.testing.assert_allclose(hs, np_hs, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cs, np_cs, rtol=1e-13, atol=1e-14)
    # the oracle's stop-gradient forward is a textbook forward and changes no value
    np.testing.assert_allclose(ref_hs, hs, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ref_cs, cs, rtol=1e-13, atol=1e-14)


def test_gate_order_is_i_f_g_o():
    # one step from c0 = 1 with W = 0: only the bias speaks. b_f = +30 (forget gate open)
    # and b_i = -30 (input gate shut) keep c = c0; then h = sigmoid(b_o) tanh(1).
    h = 2
    b = np.concatenate([np.full(h, -30.0), np.full(h, 30.0), np.full(h, 0.7), np.full(h, 1.5)])
    params = dict(w_x=jnp.zeros((1, 4 * h)), w_h=jnp.zeros((h, 4 * h)), b=jnp.asarray(b))
    hs, cs = lstm.forward(params, jnp.zeros((1, 1, 1)), jnp.zeros((1, h)), jnp.ones((1, h)))
    np.testing.assert_allclose(cs, 1.0, rtol=1e-12)
    np.testing.assert_allclose(hs, _sigmoid(1.5) * np.tanh(1.0), rtol=1e-12)


def test_dtype_is_preserved():
    inp = _inputs(dtype="float32")
    xi = jax.ShapeDtypeStruct((T,), jnp.float32)
    hs, cs = jax.eval_shape(lstm.forward, *_args(inp)[:4])
    assert hs.dtype == cs.dtype == jnp.float32
    out = jax.eval_shape(lambda xi, *a: lstm.backward(*a, truncation=2, xi=xi), xi, *_args(inp))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))


@pytest.mark.parametrize("k", [1, 3])
def test_a_cut_stops_h_and_c_exactly_at_multiples_of_k(k):
    inp = _inputs()
    params, xs, h0, c0, dhs = _args(inp)
    dhs = jnp.zeros_like(dhs).at[-1].set(dhs[-1])
    _, dxs, dh0, dc0 = lstm.backward(params, xs, h0, c0, dhs, truncation=k)
    start = k * ((T - 1) // k)
    reached = np.abs(np.asarray(dxs)).sum(axis=(1, 2)) > 0
    assert reached.tolist() == [t >= start for t in range(T)]
    assert np.all(dh0 == 0) and np.all(dc0 == 0)


def test_randomized_truncation_is_exactly_unbiased_for_h_and_c():
    # E over all 2^T patterns of xi (each with its probability) is full BPTT: dh0 and
    # dc0 included, so both adjoints must carry the weight
    steps, pi = 4, 0.7
    args = _args(_inputs(t=steps))
    keep = np.array(list(itertools.product([0.0, 1.0], repeat=steps)))
    prob = np.prod(np.where(keep > 0, pi, 1 - pi), axis=1)

    def flat(tree):
        return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])

    grads, full = jax.jit(lambda xis: (jax.vmap(lambda xi: flat(lstm.backward(*args, xi=xi)))(xis),
                                       flat(lstm.backward(*args))))(jnp.asarray(keep / pi))
    expectation = jnp.asarray(prob) @ grads
    assert float(jnp.linalg.norm(expectation - full) / jnp.linalg.norm(full)) < 1e-13


# --- bad input --------------------------------------------------------------------------

def _good():
    return list(_args(_inputs(t=3, n=2, d=4, h=5)))


def _with(params=None, **kw):
    args = _good()
    if params:
        args[0] = {**args[0], **params}
    for i, name in enumerate(("params", "xs", "h0", "c0", "dhs")):
        if name in kw:
            args[i] = jnp.asarray(kw[name])
    return args


@pytest.mark.parametrize("args, pattern", [
    (_with(params=dict(w_x=np.ones((4, 5)))),
     r"params\['w_x'\] must have shape \(D, 4H\) = \(4, 20\).*got \(4, 5\)"),
    (_with(params=dict(w_h=np.ones((5, 5)))),
     r"params\['w_h'\] must have shape \(H, 4H\) = \(5, 20\).*got \(5, 5\)"),
    (_with(params=dict(b=np.ones(5))),
     r"params\['b'\] must have shape \(4H,\) = \(20,\).*got \(5,\)"),
    (_with(h0=np.ones((3, 5))),
     r"h0 must have shape \(N, H\) with N = xs.shape\[1\] = 2, got xs \(3, 2, 4\) and h0 \(3, 5\)"),
    (_with(c0=np.ones((2, 4))), r"c0 must have the shape of h0, \(2, 5\), got \(2, 4\)"),
    (_with(dhs=np.ones((3, 2, 20))),
     r"dhs must have the shape of hs, \(T, N, H\) = \(3, 2, 5\), got \(3, 2, 20\)"),
    (_with(xs=np.ones((0, 2, 4)), dhs=np.ones((0, 2, 5))),
     r"xs must have at least one time step, got xs \(0, 2, 4\)"),
    (_with(c0=np.ones(5)), r"c0 must have rank 2, got shape \(5,\)"),
    (_with(c0=np.ones((2, 5), np.float32)), r"share one floating dtype, got .*c0: float32"),
    ([{"w_xh": np.ones((4, 5)), "w_hh": np.ones((5, 5)), "b": np.ones(5)}] + _good()[1:],
     r"params must be a dict with keys \('w_x', 'w_h', 'b'\)"),
])
def test_bad_input_is_a_value_error_naming_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        lstm.backward(*args)
    if "dhs" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            lstm.forward(*args[:4])


@pytest.mark.parametrize("kw, pattern", [
    (dict(truncation=0), r"truncation must be None or a positive int, got 0"),
    (dict(truncation=-1), r"truncation must be None or a positive int, got -1"),
    (dict(xi=np.ones(2)), r"xi must have shape \(T,\) = \(3,\).*got \(2,\)"),
])
def test_bad_truncation_or_xi_is_a_value_error(kw, pattern):
    kw = {k: jnp.asarray(v) if k == "xi" else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=pattern):
        lstm.backward(*_good(), **kw)
