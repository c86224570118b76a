"""Layer norm cases: manual.layernorm against jax.vjp of its forward (Ba et al. 2016).

The oracle is jax.vjp of ``manual.layernorm.forward`` (mean, biased variance, rsqrt: the
textbook forward); the finite-difference witness differentiates <dy, y>. Edge cases: one
row (N = 1), one feature (D = 1: x̂ = 0, so y = beta and dx = dgamma = 0 exactly), rank
1 and rank 3 inputs, and near-constant rows.

Near-constant rows are an honest ill-conditioned case: each row is an offset ±4 plus
a spread s = 1e-3 (var ≈ 1e-6, a tenth of eps = 1e-5). Computing x - mu cancels
log10(4 / 1e-3) ≈ 3.6 of the digits of x, and y moves by gamma / sigma ≈ 300 per unit
of x against ~1 on well-spread rows. The derivation is still exact: the two sides agree
to ~3e-15 in float64 and ~1e-6 in float32, about 20 times farther apart than on
well-spread rows and well inside the table. D = 64 keeps the finite-difference witness
honest too: its step moves each entry by ~h / sqrt(P) ≈ 3e-5, against the ~3e-3 on
which the layer bends (sqrt(var + eps)), and it agrees to ~1e-11; at D = 16 the larger
per-entry step put its truncation error at ~2e-9, above its 1e-9.
"""

import functools

import jax.numpy as jnp

from manual import layernorm
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["builder", "layernorm_case", "CASES"]

register_family(Family(
    name="layernorm",
    title="Layer normalisation",
    description="y = gamma ⊙ (x − mu) / sqrt(var + eps) + beta, statistics of each row "
                "(the last axis, biased variance); dx = (g − mean(g) − x̂ mean(g x̂)) / sigma "
                "with g = gamma ⊙ dy, dgamma = Σ dy ⊙ x̂, dbeta = Σ dy over the rows; the "
                "Jacobian of a row is applied, never formed (Ba, Kiros & Hinton 2016). "
                "Against jax.vjp of manual.layernorm.forward, with the finite-difference "
                "witness; near-constant rows are an ill-conditioned but exact case.",
))


def builder(shape, *, offset=0.0, spread=1.0):
    """Inputs for x of ``shape``: each row ``offset`` (times a per-row sign) plus
    ``spread`` times a standard normal; gamma ~ 1 + N(0, 0.1²), beta ~ N(0, 0.1²)."""
    def build(key, dtype):
        rng = numpy_rng(key)
        d = shape[-1]
        rows = rng.choice([-1.0, 1.0], size=shape[:-1] + (1,)) * offset
        x = rows + spread * rng.standard_normal(shape)
        return dict(x=jnp.asarray(x.astype(dtype)),
                    gamma=jnp.asarray((1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)),
                    beta=jnp.asarray((0.1 * rng.standard_normal(d)).astype(dtype)),
                    dy=jnp.asarray(rng.standard_normal(shape).astype(dtype)))
    return build


def layernorm_case(name, shape, *, eps=1e-5, offset=0.0, spread=1.0, tier="test", **kwargs):
    sizes = dict(shape="x".join(map(str, shape)), eps=eps)
    if offset or spread != 1.0:
        sizes.update(offset=offset, spread=spread)
    return vjp_case(name=name, family="layernorm", build=builder(shape, offset=offset,
                                                                 spread=spread),
                    forward=functools.partial(layernorm.forward, eps=eps),
                    backward=functools.partial(layernorm.backward, eps=eps),
                    primals=("x", "gamma", "beta"), sizes=sizes, tier=tier, **kwargs)


# (label, shape, keywords, tier): "test" covers one row, near-constant rows and two
# leading axes (gamma's gradient summed over both); "slow" the rest (every "test" row is
# two compiles of make test's budget).
CASES = (
    ("N8-D16", (8, 16), {}, "slow"),
    ("N1", (1, 16), {}, "test"),
    ("D1", (6, 1), {}, "slow"),
    ("near-constant", (8, 64), dict(offset=4.0, spread=1e-3), "test"),
    ("rank1", (16,), {}, "slow"),
    ("rank3", (2, 5, 12), {}, "test"),
    ("eps0.1", (8, 16), dict(eps=0.1), "slow"),
    ("N64-D256", (64, 256), {}, "slow"),
    ("N512-D1024", (512, 1024), {}, "report"),
)

for label, shape, kw, tier in CASES:
    register(layernorm_case(f"layernorm/{label}", shape, tier=tier, **kw))

# The benchmark of the issue: (4096, 1024), manual vs jax.vjp of the same forward, compiled.
register(layernorm_case("layernorm/bench-4096x1024", (4096, 1024), tier="bench"))
