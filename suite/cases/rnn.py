"""Vanilla RNN cases: backprop through time, full, truncated and randomized (d2l 9.7).

Oracles:
  full BPTT     jax.vjp of the project's own forward, manual.rnn.forward (a vjp_case,
                with the finite-difference witness on <dhs, hs>)
  truncation=k  jax.vjp of an independent textbook forward (``reference_forward``) that
                applies lax.stop_gradient to the state entering steps k, 2k, ...
  randomized    jax.vjp of the same forward with the state entering step t replaced by
                sg(h) + xi_t * (h - sg(h)) (reference.bptt.unroll)
A truncated or reweighted gradient is the gradient of no objective: those cases have no
finite-difference witness; the full-BPTT cases carry it.
"""

import collections

import jax
import jax.numpy as jnp

from manual import clip, rnn
from reference import autodiff, bptt
from suite.cases import Case, Family, register, register_family
from suite.cases.sequences import CHECKPOINT_CASES, SEQUENCE_CASES, normals, sequence_case

__all__ = ["Grads", "PRIMALS", "bptt_case", "builder", "clipped_case", "reference_clip",
           "reference_forward", "reference_step"]

register_family(Family(
    name="rnn",
    title="Vanilla RNN: backprop through time",
    description="h_t = tanh(x_t W_xh + h_{t-1} W_hh + b), time-major; the unfolded network "
                "is one feed-forward network sharing W_xh, W_hh, b, whose gradients sum over "
                "the steps. Full BPTT against jax.vjp of manual.rnn.forward (with the "
                "finite-difference witness); truncation=k against jax.vjp of a forward with "
                "lax.stop_gradient on the state entering steps k, 2k, ...; randomized "
                "truncation (xi_t = 0 or 1/pi) against a forward feeding step t "
                "sg(h) + xi_t (h - sg(h)) (d2l.ai 9.7; Tallec & Ollivier 2017). "
                "Clipping by global norm against an independent jax.tree_util version.",
))

PRIMALS = ("params", "xs", "h0")
Grads = collections.namedtuple("Cotangents", [f"d{k}" for k in PRIMALS])


def reference_step(params):
    """One textbook step, written independently of manual.rnn (no hoisting)."""
    def step(h, x_t):
        h = jnp.tanh(x_t @ params["w_xh"] + h @ params["w_hh"] + params["b"][None, :])
        return h, h
    return step


def reference_forward(params, xs, h0, *, truncation=None, xi=None):
    """hs, with the recurrent state cut (truncation) or reweighted (xi) for autodiff."""
    return bptt.unroll(reference_step(params), h0, xs, truncation=truncation, xi=xi)[1]


def builder(t, n, d, h, pi=None):
    """Inputs for T=t, N=n, D=d, H=h; with ``pi``, also randomized-truncation weights xi."""
    def build(key, dtype):
        k_draw, k_xi = jax.random.split(key)
        # W_hh ~ 0.8/sqrt(H): a contractive recurrence, gradients neither explode nor
        # vanish entirely over 100 steps, and |z| stays where tanh is far from flat
        x = normals(k_draw, dict(w_xh=((d, h), 1.0 / d ** 0.5), w_hh=((h, h), 0.8 / h ** 0.5),
                                 b=((h,), 0.1), xs=((t, n, d), 1.0), h0=((n, h), 0.5),
                                 dhs=((t, n, h), 1.0)), dtype)
        inputs = dict(params=dict(w_xh=x["w_xh"], w_hh=x["w_hh"], b=x["b"]),
                      xs=x["xs"], h0=x["h0"], dhs=x["dhs"])
        if pi is not None:
            inputs["xi"] = rnn.randomized_weights(k_xi, t, pi, dtype=dtype)
        return inputs
    return build


def _args(inputs):
    return tuple(inputs[k] for k in PRIMALS)


def bptt_case(name, t, n, d, h, *, truncation=None, pi=None, checkpoint=None, tier="test",
              dtypes=("float32", "float64")):
    """A registry case for T, N, D, H, a truncation strategy (full, k, randomized) and an
    optional checkpoint segment length."""
    sizes = dict(T=t, N=n, D=d, H=h, truncation=truncation or "full")
    if pi is not None:
        sizes["pi"] = pi
    if checkpoint is not None:
        sizes["checkpoint"] = checkpoint
    return sequence_case(name, "rnn", build=builder(t, n, d, h, pi), forward=rnn.forward,
                         backward=rnn.backward, reference_forward=reference_forward,
                         primals=PRIMALS, sizes=sizes, truncation=truncation, pi=pi,
                         checkpoint=checkpoint, tier=tier, dtypes=dtypes)


def reference_clip(grads, max_norm):
    """Clipping by global norm over jax.tree_util, independent of manual.clip."""
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in leaves))
    factor = jnp.minimum(1.0, max_norm / norm)
    return jax.tree_util.tree_map(lambda g: g * factor, grads), norm


def clipped_case(name, t, n, d, h, *, max_norm, truncation=None, tier="test"):
    """Clipped BPTT gradients (and the norm before clipping) against clipped autodiff."""
    def manual(inputs):
        grads = Grads(*rnn.backward(*_args(inputs), inputs["dhs"], truncation=truncation))
        return clip.clip_by_global_norm(grads, max_norm)

    def reference(inputs):
        def forward(*primals):
            return reference_forward(*primals, truncation=truncation)
        return reference_clip(Grads(*autodiff.vjp(forward, _args(inputs), inputs["dhs"])), max_norm)

    return Case(name=name, family="rnn", build=builder(t, n, d, h), manual=manual,
                reference=reference, tier=tier,
                sizes=dict(T=t, N=n, D=d, H=h, truncation=truncation or "full", max_norm=max_norm))


for label, t, n, d, h, k, pi, tier in SEQUENCE_CASES:
    register(bptt_case(f"rnn/{label}", t, n, d, h, truncation=k, pi=pi, tier=tier))
for label, t, n, d, h, k, pi, ck, tier in CHECKPOINT_CASES:
    register(bptt_case(f"rnn/{label}", t, n, d, h, truncation=k, pi=pi, checkpoint=ck, tier=tier))

register(clipped_case("rnn/T7-clip", 7, 3, 4, 5, max_norm=1.0, tier="slow"))
register(clipped_case("rnn/T7-k3-clip", 7, 3, 4, 5, max_norm=1.0, truncation=3, tier="slow"))

# The benchmark of the issue: manual BPTT vs jax.vjp of the same forward, both compiled.
register(bptt_case("rnn/bench-T100-N32-D256-H256", 100, 32, 256, 256, tier="bench"))
# The same with checkpoint="sqrt" (k = 10): what recomputing the segments costs at T = 100.
register(bptt_case("rnn/bench-T100-N32-D256-H256-ck-sqrt", 100, 32, 256, 256,
                   checkpoint="sqrt", tier="bench"))
