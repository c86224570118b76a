"""GroupNorm cases: manual.groupnorm against jax.vjp of a plain-jnp forward (Wu & He 2018).

The oracle is jax.vjp of ``plain_forward`` (the (N, G, C/G, ...) view, jnp.var, as
torch.nn.functional.group_norm defines the layer; no line shared with manual/), with the
finite-difference witness on <dy, y>. Edge cases: G = 1 (layer norm over (C, H, W)),
G = C (instance norm), no spatial axis, one and three spatial axes.
"""

import functools

import jax.numpy as jnp

from manual import groupnorm
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["plain_forward", "builder", "groupnorm_case", "CASES"]

register_family(Family(
    name="groupnorm",
    title="Group normalisation",
    description="x (N, C, *spatial), the C channels in G groups; each (sample, group) "
                "normalised over its C/G channels and every position, y = gamma_c x̂ + "
                "beta_c, as torch group_norm. dx = (g − mean(g) − x̂ mean(g x̂)) / sigma per "
                "(sample, group) with g = gamma ⊙ dy — layer norm's row Jacobian applied, "
                "never formed; dgamma, dbeta summed per channel (Wu & He 2018). Against "
                "jax.vjp of a plain-jnp forward, with the finite-difference witness.",
))


def plain_forward(x, gamma, beta, *, groups, eps=1e-5):
    """torch's group_norm in plain jnp, the oracle."""
    n, c = x.shape[:2]
    xg = x.reshape((n, groups, c // groups) + x.shape[2:])
    axes = tuple(range(2, xg.ndim))
    xg = (xg - jnp.mean(xg, axis=axes, keepdims=True)) / jnp.sqrt(
        jnp.var(xg, axis=axes, keepdims=True) + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return xg.reshape(x.shape) * gamma.reshape(shape) + beta.reshape(shape)


def builder(shape):
    """x and dy standard normal; gamma ~ 1 + N(0, 0.1²), beta ~ N(0, 0.1²) per channel."""
    def build(key, dtype):
        rng = numpy_rng(key)
        c = shape[1]
        return dict(x=jnp.asarray(rng.standard_normal(shape).astype(dtype)),
                    gamma=jnp.asarray((1.0 + 0.1 * rng.standard_normal(c)).astype(dtype)),
                    beta=jnp.asarray((0.1 * rng.standard_normal(c)).astype(dtype)),
                    dy=jnp.asarray(rng.standard_normal(shape).astype(dtype)))
    return build


def groupnorm_case(name, shape, groups, *, eps=1e-5, tier="test", **kwargs):
    return vjp_case(name=name, family="groupnorm", build=builder(shape),
                    forward=functools.partial(plain_forward, groups=groups, eps=eps),
                    backward=functools.partial(groupnorm.backward, groups=groups, eps=eps),
                    primals=("x", "gamma", "beta"),
                    sizes=dict(shape="x".join(map(str, shape)), groups=groups, eps=eps),
                    tier=tier, **kwargs)


# (label, shape, groups, tier)
CASES = (
    ("N2-C6-G3-4x5", (2, 6, 4, 5), 3, "test"),
    ("G1", (2, 4, 3, 3), 1, "slow"),
    ("G=C", (2, 4, 3, 3), 4, "slow"),
    ("no-spatial", (5, 8), 2, "slow"),
    ("3d", (2, 4, 2, 3, 2), 2, "slow"),
    ("N8-C64-G32-16x16", (8, 64, 16, 16), 32, "report"),
)

for label, shape, groups, tier in CASES:
    register(groupnorm_case(f"groupnorm/{label}", shape, groups, tier=tier))

# The benchmark: a ResNet-sized activation with 32 groups, manual vs jax.vjp, compiled.
register(groupnorm_case("groupnorm/bench-NCHW-32x64x32x32-G32", (32, 64, 32, 32), 32,
                        tier="bench"))
