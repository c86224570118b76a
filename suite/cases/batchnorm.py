"""Batch norm cases: the staged and the fused backward against jax.vjp of the forward.

Both implementations of the backward pass (``manual.batchnorm.backward``, node by node
through the graph, and ``backward_fast``, cs231n's one-expression form) are checked
against the same oracle, jax.vjp of ``manual.batchnorm.forward`` (training mode, biased
variance), with the finite-difference witness on <dy, y>. Cases ``batchnorm/...`` use
the staged backward, ``batchnorm/fast/...`` the fused one. Inputs are (N, D), reduced
over the batch, or NCHW, reduced per channel over (N, H, W).

Edge cases: one feature (D = 1); a single image (N = 1, NCHW: the statistics still
average H·W values); a single sample of an (N, D) batch is refused, as torch refuses it
(one value per feature: "Expected more than 1 value per channel"); and a near-constant
feature, an honest ill-conditioned case
exactly as layer norm's near-constant rows (suite/cases/layernorm.py): each feature is
an offset ±4 plus a spread of 1e-3 over 64 samples, so x - mu cancels ~3.6 digits and
dy/dx ≈ 300; the two sides still agree to the table and the witness to ~1e-11.
"""

import functools

import jax.numpy as jnp

from manual import batchnorm
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["builder", "batchnorm_case", "IMPLEMENTATIONS", "CASES", "plain_eval_forward",
           "eval_builder", "eval_case", "EVAL_CASES"]

register_family(Family(
    name="batchnorm",
    title="Batch normalisation (training mode), staged and fused backward",
    description="y = gamma ⊙ (x − mu) / sqrt(var + eps) + beta with batch statistics (biased "
                "variance) over axis 0 of (N, D), or per channel over (N, H, W) of NCHW. "
                "`batchnorm/...`: the staged backward, node by node through the forward's "
                "graph (Karpathy's backprop ninja, cs231n batchnorm_backward); "
                "`batchnorm/fast/...`: the fused dx = gamma/(M sigma) (M dy − Σdy − x̂ Σ dy x̂) "
                "(cs231n batchnorm_backward_alt). Both against jax.vjp of "
                "manual.batchnorm.forward, with the finite-difference witness "
                "(Ioffe & Szegedy 2015). `batchnorm/eval/...`: evaluation mode with running "
                "statistics (constants): dx = gamma ⊙ dy / sqrt(var + eps), against jax.vjp "
                "of a plain-jnp forward.",
))

IMPLEMENTATIONS = {"staged": batchnorm.backward, "fast": batchnorm.backward_fast}


def builder(shape, *, offset=0.0, spread=1.0):
    """Inputs for x of ``shape`` ((N, D) or NCHW): each feature ``offset`` (times a sign)
    plus ``spread`` times a standard normal; gamma ~ 1 + N(0, 0.1²), beta ~ N(0, 0.1²)."""
    def build(key, dtype):
        rng = numpy_rng(key)
        c = shape[1]
        per_feature = (1, c) + (1,) * (len(shape) - 2)
        x = rng.choice([-1.0, 1.0], size=per_feature) * offset + spread * rng.standard_normal(shape)
        return dict(x=jnp.asarray(x.astype(dtype)),
                    gamma=jnp.asarray((1.0 + 0.1 * rng.standard_normal(c)).astype(dtype)),
                    beta=jnp.asarray((0.1 * rng.standard_normal(c)).astype(dtype)),
                    dy=jnp.asarray(rng.standard_normal(shape).astype(dtype)))
    return build


def batchnorm_case(name, shape, *, implementation="staged", eps=1e-5, offset=0.0, spread=1.0,
                   tier="test", **kwargs):
    sizes = dict(shape="x".join(map(str, shape)), layout="NCHW" if len(shape) == 4 else "ND",
                 backward=implementation, eps=eps)
    if offset or spread != 1.0:
        sizes.update(offset=offset, spread=spread)
    return vjp_case(name=name, family="batchnorm",
                    build=builder(shape, offset=offset, spread=spread),
                    forward=functools.partial(batchnorm.forward, eps=eps),
                    backward=functools.partial(IMPLEMENTATIONS[implementation], eps=eps),
                    primals=("x", "gamma", "beta"), sizes=sizes, tier=tier, **kwargs)


def _name(label, implementation):
    return f"batchnorm/{label}" if implementation == "staged" else f"batchnorm/fast/{label}"


# (label, shape, keywords, tier per implementation). "test" runs NCHW with both forms
# and the (N, D) layout with the staged one, on a near-constant feature; every other
# combination is "slow".
CASES = (
    ("N16-D8", (16, 8), {}, {"staged": "slow", "fast": "slow"}),
    ("NCHW", (4, 3, 5, 6), {}, {"staged": "test", "fast": "test"}),
    ("near-constant", (64, 8), dict(offset=4.0, spread=1e-3), {"staged": "test", "fast": "slow"}),
    ("D1", (16, 1), {}, {"staged": "slow", "fast": "slow"}),
    ("N1-NCHW", (1, 3, 4, 4), {}, {"staged": "slow", "fast": "slow"}),
    # two samples: x̂ = ±sqrt(var / (var + eps)) whatever x is, so dx ∝ eps / (var + eps);
    # with eps = 1e-5 it is the remainder of a 5-digit cancellation (ill-conditioned past
    # the table, for autodiff too: test_batchnorm.py shows it); eps = 0.5 keeps it honest
    ("N2-eps0.5", (2, 8), dict(eps=0.5), {"staged": "slow", "fast": "slow"}),
    ("N256-D1024", (256, 1024), {}, {"staged": "report", "fast": "report"}),
    ("NCHW-8x16x16x16", (8, 16, 16, 16), {}, {"staged": "report", "fast": "report"}),
)

for label, shape, kw, tiers in CASES:
    for implementation, tier in tiers.items():
        register(batchnorm_case(_name(label, implementation), shape,
                                implementation=implementation, tier=tier, **kw))

# Benchmarks: a wide (N, D) batch and an NCHW activation of a small convnet, both forms.
for label, shape in (("bench-256x1024", (256, 1024)), ("bench-NCHW-32x64x32x32", (32, 64, 32, 32))):
    for implementation in IMPLEMENTATIONS:
        register(batchnorm_case(_name(label, implementation), shape,
                                implementation=implementation, tier="bench"))


# --- evaluation mode: running statistics, constants of the layer -------------------------

def plain_eval_forward(x, gamma, beta, mean, var, *, eps=1e-5):
    """gamma (x - mean) / sqrt(var + eps) + beta in plain jnp: the oracle of eval mode."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (gamma.reshape(shape) * (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
            + beta.reshape(shape))


def eval_builder(shape):
    """builder's x, gamma, beta, dy; running mean ~ N(0, 0.5²), var ~ U(0.5, 2)."""
    base = builder(shape)

    def build(key, dtype):
        inputs = base(key, dtype)
        rng = numpy_rng(key)
        rng.standard_normal(1)  # a stream of its own after builder's draws
        c = shape[1]
        inputs["mean"] = jnp.asarray((0.5 * rng.standard_normal(c)).astype(dtype))
        inputs["var"] = jnp.asarray(rng.uniform(0.5, 2.0, c).astype(dtype))
        return inputs
    return build


def eval_case(name, shape, *, eps=1e-5, tier="test", **kwargs):
    return vjp_case(name=name, family="batchnorm", build=eval_builder(shape),
                    forward=functools.partial(plain_eval_forward, eps=eps),
                    backward=functools.partial(batchnorm.eval_backward, eps=eps),
                    primals=("x", "gamma", "beta"),
                    arguments=("x", "gamma", "beta", "mean", "var"),
                    sizes=dict(shape="x".join(map(str, shape)),
                               layout="NCHW" if len(shape) == 4 else "ND", mode="eval", eps=eps),
                    tier=tier, **kwargs)


# (label, shape, tier): one sample is fine in eval mode (no batch statistics). All "slow":
# make test compares eval_backward with this oracle in float64 (test_batchnorm.py).
EVAL_CASES = (
    ("NCHW", (4, 3, 5, 6), "slow"),
    ("N1", (1, 8), "slow"),
    ("N16-D8", (16, 8), "slow"),
    ("N256-D1024", (256, 1024), "report"),
)

for label, shape, tier in EVAL_CASES:
    register(eval_case(f"batchnorm/eval/{label}", shape, tier=tier))
register(eval_case("batchnorm/eval/bench-NCHW-32x64x32x32", (32, 64, 32, 32), tier="bench"))
