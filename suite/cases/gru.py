"""GRU cases: backprop through time, full, truncated and randomized (torch.nn.GRU's GRU).

Oracles, as for the RNN and the LSTM (suite/cases/rnn.py):
  full BPTT     jax.vjp of the project's own forward, manual.gru.forward, with the
                finite-difference witness on <dhs, hs>
  truncation=k  jax.vjp of an independent textbook forward (``reference_forward``) that
                applies lax.stop_gradient to the state entering steps k, 2k, ...
  randomized    the same forward with the state entering step t replaced by
                sg(h) + xi_t * (h - sg(h)) (reference.bptt.unroll)
The sequence table is the one rnn and lstm share (suite/cases/sequences.py); its
"test" rows beyond two (full BPTT at T = 7, with the witness, and randomized truncation
composed with a regular one) run as "slow" here, to keep ``make test`` inside its
budget; T = 1, N = 1, k >= T and the 100-step sequences are all in "slow", and so are the
checkpointed rows (CHECKPOINT_CASES).
"""

import jax
import jax.numpy as jnp

from manual import gru
from reference import bptt
from suite.cases import Family, register, register_family
from suite.cases.sequences import CHECKPOINT_CASES, SEQUENCE_CASES, normals, sequence_case

__all__ = ["builder", "bptt_case", "reference_step", "reference_forward", "PRIMALS"]

register_family(Family(
    name="gru",
    title="GRU: backprop through time",
    description="torch.nn.GRU's equations, gates r, z, n along 3H: r, z = σ(x W_x + b_x + "
                "h W_h + b_h), n = tanh(x W_xn + b_xn + r ⊙ (h W_hn + b_hn)), "
                "h' = (1 − z) ⊙ n + z ⊙ h. The recurrent adjoint reaches h_{t-1} through W_h "
                "(three gates) and directly through z ⊙ h_{t-1}; r scales only the recurrent "
                "term of the candidate. Full BPTT against jax.vjp of manual.gru.forward (with "
                "the finite-difference witness); truncation=k and randomized truncation "
                "against a textbook forward with lax.stop_gradient at the cuts (Cho et al. "
                "2014; torch.nn.GRU; d2l.ai 9.7; Tallec & Ollivier 2017).",
))

PRIMALS = ("params", "xs", "h0")
TEST_LABELS = ("T7", "T7-k3-xi0.5")


def reference_step(params):
    """One textbook GRU step (torch.nn.GRU), written independently of manual.gru."""
    def step(h, x_t):
        a_r, a_z, a_n = jnp.split(x_t @ params["w_x"] + params["b_x"][None, :], 3, axis=1)
        u_r, u_z, u_n = jnp.split(h @ params["w_h"] + params["b_h"][None, :], 3, axis=1)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        h = (1.0 - z) * n + z * h
        return h, h
    return step


def reference_forward(params, xs, h0, *, truncation=None, xi=None):
    """hs, with the recurrent state cut (truncation) or reweighted (xi) for autodiff."""
    return bptt.unroll(reference_step(params), h0, xs, truncation=truncation, xi=xi)[1]


def builder(t, n, d, h, pi=None):
    """Inputs for T=t, N=n, D=d, H=h; with ``pi``, also randomized-truncation weights xi."""
    def build(key, dtype):
        k_draw, k_xi = jax.random.split(key)
        # weights ~ 1/sqrt(fan-in) keep the gates' arguments O(1), where σ and tanh are
        # far from flat; z ~ 0.5 on average, a fading memory over the 100-step cases
        x = normals(k_draw, dict(w_x=((d, 3 * h), 1.0 / d ** 0.5),
                                 w_h=((h, 3 * h), 1.0 / h ** 0.5),
                                 b_x=((3 * h,), 0.1), b_h=((3 * h,), 0.1),
                                 xs=((t, n, d), 1.0), h0=((n, h), 0.5),
                                 dhs=((t, n, h), 1.0)), dtype)
        inputs = dict(params={k: x[k] for k in gru.PARAM_NAMES},
                      xs=x["xs"], h0=x["h0"], dhs=x["dhs"])
        if pi is not None:
            inputs["xi"] = gru.randomized_weights(k_xi, t, pi, dtype=dtype)
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
    return sequence_case(name, "gru", build=builder(t, n, d, h, pi), forward=gru.forward,
                         backward=gru.backward, reference_forward=reference_forward,
                         primals=PRIMALS, sizes=sizes, truncation=truncation, pi=pi,
                         checkpoint=checkpoint, tier=tier, dtypes=dtypes)


for label, t, n, d, h, k, pi, tier in SEQUENCE_CASES:
    if tier == "test" and label not in TEST_LABELS:
        tier = "slow"
    register(bptt_case(f"gru/{label}", t, n, d, h, truncation=k, pi=pi, tier=tier))

# Checkpointed BPTT: all "slow" here (make test sweeps every k for the GRU against full
# BPTT and its oracle in suite/tests/test_bptt_checkpoint.py).
for label, t, n, d, h, k, pi, ck, tier in CHECKPOINT_CASES:
    register(bptt_case(f"gru/{label}", t, n, d, h, truncation=k, pi=pi, checkpoint=ck,
                       tier="slow" if tier == "test" else tier))

# D = 1 (a scalar input per step) and H = 1 (a scalar state), full and truncated.
register(bptt_case("gru/T7-D1-H1", 7, 3, 1, 1, tier="slow"))
register(bptt_case("gru/T7-D1-H1-k2", 7, 3, 1, 1, truncation=2, tier="slow"))

# The benchmark of the issue: manual BPTT vs jax.vjp of the same forward, both compiled.
register(bptt_case("gru/bench-T100-N32-D256-H256", 100, 32, 256, 256, tier="bench"))
# The same with checkpoint="sqrt" (k = 10): what recomputing the segments costs at T = 100.
register(bptt_case("gru/bench-T100-N32-D256-H256-ck-sqrt", 100, 32, 256, 256,
                   checkpoint="sqrt", tier="bench"))
