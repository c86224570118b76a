"""Layer norm cases: manual.layernorm against jax.vjp of its forward (Ba et al. 2016).

The oracle is jax.vjp of ``manual.layernorm.forward`` (mean, biased variance, rsqrt: the
textbook forward); for a normalized_shape of several axes (gamma.ndim > 1) it is jax.vjp of
``plain_forward`` (jnp.var, jnp.sqrt); the finite-difference witness differentiates
<dy, y>. Edge cases: one row (N = 1), one feature (D = 1: x̂ = 0, so y = beta and dx =
dgamma = 0 exactly), rank 1 and rank 3 inputs, near-constant rows, and a normalized_shape
of two and three axes.

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

__all__ = ["builder", "plain_forward", "layernorm_case", "CASES"]

register_family(Family(
    name="layernorm",
    title="Layer normalisation",
    description="y = gamma ⊙ (x − mu) / sqrt(var + eps) + beta, statistics of each row "
                "(the last axis, biased variance); dx = (g − mean(g) − x̂ mean(g x̂)) / sigma "
                "with g = gamma ⊙ dy, dgamma = Σ dy ⊙ x̂, dbeta = Σ dy over the rows; the "
                "Jacobian of a row is applied, never formed (Ba, Kiros & Hinton 2016). "
                "Against jax.vjp of manual.layernorm.forward, with the finite-difference "
                "witness; near-constant rows are an ill-conditioned but exact case. "
                "`normalized2-...`: a normalized_shape of several trailing axes (torch's), "
                "against jax.vjp of a plain-jnp forward.",
))


def builder(shape, *, offset=0.0, spread=1.0, normalized=1):
    """Inputs for x of ``shape``: each row ``offset`` (times a per-row sign) plus
    ``spread`` times a standard normal; gamma ~ 1 + N(0, 0.1²), beta ~ N(0, 0.1²), of the
    trailing ``normalized`` axes (normalized_shape)."""
    def build(key, dtype):
        rng = numpy_rng(key)
        d = shape[len(shape) - normalized:]
        rows = rng.choice([-1.0, 1.0], size=shape[:-1] + (1,)) * offset
        x = rows + spread * rng.standard_normal(shape)
        return dict(x=jnp.asarray(x.astype(dtype)),
                    gamma=jnp.asarray((1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)),
                    beta=jnp.asarray((0.1 * rng.standard_normal(d)).astype(dtype)),
                    dy=jnp.asarray(rng.standard_normal(shape).astype(dtype)))
    return build


def plain_forward(x, gamma, beta, *, eps=1e-5):
    """torch's layer_norm over the trailing gamma.ndim axes in plain jnp (jnp.var, jnp.sqrt):
    the oracle of the multi-axis cases, sharing no line with manual/."""
    axes = tuple(range(x.ndim - gamma.ndim, x.ndim))
    row = (1,) * (x.ndim - gamma.ndim) + gamma.shape
    gamma, beta = gamma.reshape(row), beta.reshape(row)
    return ((x - jnp.mean(x, axis=axes, keepdims=True))
            / jnp.sqrt(jnp.var(x, axis=axes, keepdims=True) + eps) * gamma + beta)


def layernorm_case(name, shape, *, eps=1e-5, offset=0.0, spread=1.0, normalized=1,
                   tier="test", **kwargs):
    sizes = dict(shape="x".join(map(str, shape)), eps=eps)
    if offset or spread != 1.0:
        sizes.update(offset=offset, spread=spread)
    if normalized != 1:
        sizes.update(normalized=normalized)
    forward = layernorm.forward if normalized == 1 else plain_forward
    return vjp_case(name=name, family="layernorm",
                    build=builder(shape, offset=offset, spread=spread, normalized=normalized),
                    forward=functools.partial(forward, eps=eps),
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
    # normalized_shape of several axes, as torch's: the statistics over the trailing
    # gamma.ndim axes, against jax.vjp of plain_forward ("slow": make test checks instead
    # that two axes equal their flattened one, itself a "test" row, in test_layernorm.py)
    ("normalized2-rank3", (3, 4, 5), dict(normalized=2), "slow"),
    ("normalized3-rank4", (2, 3, 4, 5), dict(normalized=3), "slow"),
    ("normalized2-rank2", (6, 7), dict(normalized=2), "slow"),
)

for label, shape, kw, tier in CASES:
    register(layernorm_case(f"layernorm/{label}", shape, tier=tier, **kw))

# The benchmark of the issue: (4096, 1024), manual vs jax.vjp of the same forward, compiled.
register(layernorm_case("layernorm/bench-4096x1024", (4096, 1024), tier="bench"))
register(layernorm_case("layernorm/bench-64x64x256-normalized2", (64, 64, 256), normalized=2,
                        tier="bench"))
