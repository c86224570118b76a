"""LSTM cases: backprop through time, full, truncated and randomized (d2l 9.7, 10.1).

Oracles, as for the RNN (suite/cases/rnn.py):
  full BPTT     jax.vjp of the project's own forward, manual.lstm.forward (its hs), with
                the finite-difference witness on <dhs, hs>
  truncation=k  jax.vjp of an independent textbook forward (``reference_forward``) that
                applies lax.stop_gradient to (h, c) entering steps k, 2k, ...
  randomized    the same forward with both h and c entering step t replaced by
                sg(s) + xi_t * (s - sg(s)) (reference.bptt.unroll)
The cell states get no cotangent from outside (the contract), so the cotangent is dhs.
"""


import jax
import jax.numpy as jnp

from manual import lstm
from reference import bptt
from suite.cases import Family, register, register_family
from suite.cases.sequences import CHECKPOINT_CASES, SEQUENCE_CASES, normals, sequence_case

__all__ = ["PRIMALS", "bptt_case", "builder", "hidden_states", "reference_forward",
           "reference_hidden_states", "reference_step"]

register_family(Family(
    name="lstm",
    title="LSTM: backprop through time",
    description="z_t = x_t W_x + h_{t-1} W_h + b with gates i, f, g, o along 4H; "
                "c_t = f c_{t-1} + i g, h_t = o tanh(c_t). The cell adjoint has two paths "
                "into c_t (through h_t and from c_{t+1} via f). Full BPTT against jax.vjp of "
                "manual.lstm.forward (with the finite-difference witness); truncation=k "
                "against jax.vjp of a forward with lax.stop_gradient on (h, c) entering steps "
                "k, 2k, ...; randomized truncation against a forward feeding step t "
                "sg(s) + xi_t (s - sg(s)) for both h and c (d2l.ai 9.7, 10.1; Tallec & "
                "Ollivier 2017).",
))

PRIMALS = ("params", "xs", "h0", "c0")


def reference_step(params):
    """One textbook LSTM step, gates i, f, g, o, written independently of manual.lstm."""
    def step(state, x_t):
        h, c = state
        z = x_t @ params["w_x"] + h @ params["w_h"] + params["b"][None, :]
        i, f, g, o = jnp.split(z, 4, axis=1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), (h, c)
    return step


def reference_forward(params, xs, h0, c0, *, truncation=None, xi=None):
    """(hs, cs), with (h, c) cut (truncation) or reweighted (xi) for autodiff."""
    return bptt.unroll(reference_step(params), (h0, c0), xs, truncation=truncation, xi=xi)[1]


def reference_hidden_states(params, xs, h0, c0, *, truncation=None, xi=None):
    """hs of ``reference_forward``: the oracle's cotangent meets hs only."""
    return reference_forward(params, xs, h0, c0, truncation=truncation, xi=xi)[0]


def hidden_states(params, xs, h0, c0):
    """The project's forward, hs only: the cotangent dhs meets hs, the cells get none."""
    return lstm.forward(params, xs, h0, c0)[0]


def builder(t, n, d, h, pi=None):
    """Inputs for T=t, N=n, D=d, H=h; with ``pi``, also randomized-truncation weights xi."""
    def build(key, dtype):
        k_draw, k_xi = jax.random.split(key)
        # weights ~ 1/sqrt(fan-in) keep the pre-activations O(1), where σ and tanh are
        # far from flat; the forget gate is then ~0.5 on average, a fading memory
        x = normals(k_draw, dict(w_x=((d, 4 * h), 1.0 / d ** 0.5), w_h=((h, 4 * h), 1.0 / h ** 0.5),
                                 b=((4 * h,), 0.1), xs=((t, n, d), 1.0), h0=((n, h), 0.5),
                                 c0=((n, h), 1.0), dhs=((t, n, h), 1.0)), dtype)
        inputs = dict(params=dict(w_x=x["w_x"], w_h=x["w_h"], b=x["b"]),
                      xs=x["xs"], h0=x["h0"], c0=x["c0"], dhs=x["dhs"])
        if pi is not None:
            inputs["xi"] = lstm.randomized_weights(k_xi, t, pi, dtype=dtype)
        return inputs
    return build



def bptt_case(name, t, n, d, h, *, truncation=None, pi=None, checkpoint=None, tier="test",
              dtypes=("float32", "float64")):
    """A registry case for T, N, D, H, a truncation strategy (full, k, randomized) and an
    optional checkpoint segment length."""
    sizes = dict(T=t, N=n, D=d, H=h, truncation=truncation or "full")
    if pi is not None:
        sizes["pi"] = pi
    if checkpoint is not None:
        sizes["checkpoint"] = checkpoint
    return sequence_case(name, "lstm", build=builder(t, n, d, h, pi), forward=hidden_states,
                         backward=lstm.backward, reference_forward=reference_hidden_states,
                         primals=PRIMALS, sizes=sizes, truncation=truncation, pi=pi,
                         checkpoint=checkpoint, tier=tier, dtypes=dtypes)


for label, t, n, d, h, k, pi, tier in SEQUENCE_CASES:
    register(bptt_case(f"lstm/{label}", t, n, d, h, truncation=k, pi=pi, tier=tier))
# checkpointed rows: "slow" here, make test's budget (test_bptt_checkpoint.py sweeps every
# k for the LSTM against full BPTT and its oracle in make test)
for label, t, n, d, h, k, pi, ck, tier in CHECKPOINT_CASES:
    register(bptt_case(f"lstm/{label}", t, n, d, h, truncation=k, pi=pi, checkpoint=ck,
                       tier="slow" if tier == "test" else tier))

# The benchmark of the issue: manual BPTT vs jax.vjp of the same forward, both compiled.
register(bptt_case("lstm/bench-T100-N32-D256-H256", 100, 32, 256, 256, tier="bench"))
# The same with checkpoint="sqrt" (k = 10): what recomputing the segments costs at T = 100.
register(bptt_case("lstm/bench-T100-N32-D256-H256-ck-sqrt", 100, 32, 256, 256,
                   checkpoint="sqrt", tier="bench"))
