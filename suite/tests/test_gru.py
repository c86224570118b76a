"""manual.gru beyond the registry: the forward against numpy (gate order r, z, n and
torch's placement of r), the exact meaning of a cut, planted BPTT bugs of the GRU kind,
bad input.

As in test_rnn.py and test_lstm.py, the planted bugs live in a plain numpy BPTT loop
(``np_bptt``): right, it agrees with the autodiff oracle to float64 tolerance; with each
mistake, the suite's comparison fails it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import gru
from suite import cases as registry
from suite import compare as cmp
from suite.cases import gru as gru_cases

T, N, D, H = 7, 3, 4, 5


@functools.lru_cache(maxsize=None)
def _inputs(t=T, n=N, d=D, h=H, dtype="float64", seed=0):
    return gru_cases.builder(t, n, d, h)(jax.random.PRNGKey(seed), dtype)


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# --- an independent numpy GRU and BPTT, with switches for the classic mistakes --------

def np_forward(params, xs, h0):
    """(hs, gates) with gates (r, z, n, u_n) each (T, N, H): torch.nn.GRU's equations."""
    h, hs, gates = np.asarray(h0), [], []
    for x_t in np.asarray(xs):
        a_r, a_z, a_n = np.split(x_t @ params["w_x"] + params["b_x"], 3, axis=1)
        u_r, u_z, u_n = np.split(h @ params["w_h"] + params["b_h"], 3, axis=1)
        r, z = _sigmoid(a_r + u_r), _sigmoid(a_z + u_z)
        n = np.tanh(a_n + r * u_n)
        h = (1 - z) * n + z * h
        hs.append(h), gates.append((r, z, n, u_n, a_n))
    return np.stack(hs), [np.stack(g) for g in zip(*gates, strict=True)]


def np_bptt(params, xs, h0, dhs, *, omega=None, bug=None):
    params, xs, h0, dhs = _np((params, xs, h0, dhs))
    steps = len(xs)
    omega = np.ones(steps) if omega is None else np.asarray(omega, np.float64)
    hs, (r, z, n, u_n, a_n) = np_forward(params, xs, h0)
    h_prev = np.concatenate([h0[None], hs[:-1]])
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    dxs, g = np.zeros_like(xs), np.zeros_like(h0)
    for t in reversed(range(steps)):
        dh = dhs[t] + g
        if bug == "z_convention_swapped":   # derived for h = z n + (1 - z) h_prev
            dn, dz, direct = dh * z[t], dh * (n[t] - h_prev[t]), dh * (1 - z[t])
        else:
            dn, dz, direct = dh * (1 - z[t]), dh * (h_prev[t] - n[t]), dh * z[t]
        d_alpha = dn * (1 - n[t] ** 2)
        if bug == "r_on_the_input_term":    # derived for n = tanh(r ⊙ a_n + u_n)
            dr, da_n, du_n = d_alpha * a_n[t], d_alpha * r[t], d_alpha
        elif bug == "r_outside_the_bias":   # derived for n = tanh(a_n + r ⊙ (h W_hn) + b_hn)
            u_n_no_bias = u_n[t] - params["b_h"][2 * H:]
            dr, da_n, du_n = d_alpha * u_n_no_bias, d_alpha, d_alpha * r[t]
        else:
            dr, da_n, du_n = d_alpha * u_n[t], d_alpha, d_alpha * r[t]
        da_r, da_z = dr * r[t] * (1 - r[t]), dz * z[t] * (1 - z[t])
        delta_x = np.concatenate([da_r, da_z, da_n], axis=1)
        delta_h = np.concatenate([da_r, da_z, du_n], axis=1)
        dparams["w_x"] += xs[t].T @ delta_x
        dparams["b_x"] += delta_x.sum(0)
        dparams["w_h"] += h_prev[t].T @ delta_h
        dparams["b_h"] += delta_h.sum(0)
        dxs[t] = delta_x @ params["w_x"].T
        through_w_h = delta_h @ params["w_h"].T
        g = omega[t] * (through_w_h if bug == "no_direct_path" else through_w_h + direct)
    return dparams, dxs, g


def np_cut_weights(steps, k):
    t = np.arange(steps)
    return np.where((t > 0) & (t % k == 0), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _case(name):
    case = registry.get(name)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, _np(jax.jit(case.reference)(inputs))


def _judge(out, reference):
    return cmp.compare(tuple(out), tuple(reference), "float64")


def _args(inputs):
    return inputs["params"], inputs["xs"], inputs["h0"], inputs["dhs"]


def test_numpy_bptt_agrees_with_autodiff():
    # the witness of the planted tests is itself right, full and truncated+randomized
    inputs, reference = _case("gru/T7")
    assert _judge(np_bptt(*_args(inputs)), reference).passed
    inputs, reference = _case("gru/T7-k3-xi0.5")
    omega = np_cut_weights(T, 3) * np.asarray(inputs["xi"])
    assert _judge(np_bptt(*_args(inputs), omega=omega), reference).passed


@pytest.mark.parametrize("bug", ["r_on_the_input_term", "r_outside_the_bias",
                                 "z_convention_swapped", "no_direct_path"])
def test_planted_bptt_bug_fails(bug):
    inputs, reference = _case("gru/T7")
    assert not _judge(np_bptt(*_args(inputs), bug=bug), reference).passed, f"{bug} was not caught"


def test_planted_truncation_one_step_late_fails():
    inputs, reference = _case("gru/T7-k3-xi0.5")
    late = np.where((np.arange(T) > 1) & ((np.arange(T) - 1) % 3 == 0), 0.0, 1.0)
    out = np_bptt(*_args(inputs), omega=late * np.asarray(inputs["xi"]))
    assert not _judge(out, reference).passed


def test_forward_matches_numpy_and_the_reference_forward():
    # np_forward is torch.nn.GRU's equations; z -> 1 keeps the state: with a huge
    # update-gate bias every h_t is h0 (torch's convention, not h' = z n + (1 - z) h)
    inp = _inputs()
    args = (inp["params"], inp["xs"], inp["h0"])
    xi = jnp.asarray([0.0, 2, 2, 0, 2, 0, 2])
    keep = {**inp["params"], "b_x": inp["params"]["b_x"].at[H:2 * H].set(50.0)}
    hs, ref, kept = jax.jit(lambda p, *a: (
        gru.forward(p, *a), gru_cases.reference_forward(p, *a, truncation=3, xi=xi),
        gru.forward(keep, *a)))(*args)
    np.testing.assert_allclose(hs, np_forward(*_np(args))[0], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ref, hs, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(kept[-1], inp["h0"], rtol=1e-12)


def test_dtype_is_preserved():
    inp = _inputs(dtype="float32")
    xi = jax.ShapeDtypeStruct((T,), jnp.float32)
    out = jax.eval_shape(lambda xi, *a: gru.backward(*a, truncation=2, xi=xi),
                         xi, inp["params"], inp["xs"], inp["h0"], inp["dhs"])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))


@pytest.mark.slow
def test_truncation_k_at_least_T_is_full_bptt_and_equals_its_mask_as_xi():
    args = _args(_inputs())
    run = jax.jit(lambda *a: (gru.backward(*a), gru.backward(*a, truncation=T),
                              gru.backward(*a, truncation=3),
                              gru.backward(*a, xi=jnp.asarray(np_cut_weights(T, 3)))))
    full, at_t, by_k, by_xi = (jax.tree_util.tree_leaves(out) for out in run(*args))
    assert all(np.array_equal(a, b) for a, b in zip(full, at_t, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(by_k, by_xi, strict=True))


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
    (_with(params=dict(w_x=np.ones((4, 12)))),
     r"params\['w_x'\] must have shape \(D, 3H\) = \(4, 15\).*got \(4, 12\)"),
    (_with(params=dict(w_h=np.ones((5, 5)))),
     r"params\['w_h'\] must have shape \(H, 3H\) = \(5, 15\).*got \(5, 5\)"),
    (_with(params=dict(b_h=np.ones(5))), r"params\['b_h'\] must have shape \(3H,\) = \(15,\)"),
    (_with(h0=np.ones((3, 5))), r"h0 must have shape \(N, H\) with N = xs.shape\[1\] = 2"),
    (_with(dhs=np.ones((2, 2, 5))), r"dhs must have the shape of hs, \(T, N, H\) = \(3, 2, 5\)"),
    (_with(xs=np.ones((2, 4))), r"xs must have rank 3"),
    ([{"w_x": np.ones((4, 15)), "w_h": np.ones((5, 15)), "b": np.ones(15)}] + _good()[1:],
     r"params must be a dict with keys \('w_x', 'w_h', 'b_x', 'b_h'\)"),
])
def test_bad_input_is_a_value_error_naming_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        gru.backward(*args)
    if "dhs" not in pattern:
        with pytest.raises(ValueError, match=pattern):
            gru.forward(*args[:3])


@pytest.mark.parametrize("kw, pattern", [
    (dict(truncation=0), r"truncation must be None or a positive int, got 0"),
    (dict(xi=jnp.ones(4)), r"xi must have shape \(T,\) = \(3,\)"),
])
def test_bad_truncation_or_xi_is_a_value_error(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        gru.backward(*_good(), **kw)
