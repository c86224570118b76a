"""RMSNorm cases: manual.rmsnorm against jax.vjp of a plain-jnp forward (Zhang & Sennrich 2019).

The oracle is jax.vjp of ``plain_forward`` (x / sqrt(mean(x²) + eps) * gamma written with
jnp.sqrt, sharing no line with manual/), with the finite-difference witness on <dy, y>.
eps=None (the dtype's machine epsilon, as torch.nn.functional.rms_norm) is resolved per
dtype on both sides: 2.2e-16 in float64, 1.2e-7 in float32. Edge cases: one row, one
feature (D = 1: y = gamma x / sqrt(x² + eps) = ±gamma nearly, dx ≈ 0), a normalized_shape
of two axes, and an explicit eps.
"""

import functools

import jax.numpy as jnp

from manual import rmsnorm
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["plain_forward", "builder", "rmsnorm_case", "CASES"]

register_family(Family(
    name="rmsnorm",
    title="RMS normalisation",
    description="y = gamma ⊙ x / sqrt(mean(x²) + eps) over the trailing gamma.ndim axes "
                "(eps=None: the dtype's machine epsilon, as torch rms_norm); "
                "dx = r g − x r³ mean(g ⊙ x) with g = gamma ⊙ dy, r = 1/sqrt(ms + eps), the "
                "row's Jacobian r (I − x̂ x̂ᵀ / D) applied, never formed; dgamma = Σ dy ⊙ x̂ "
                "(Zhang & Sennrich 2019). Against jax.vjp of a plain-jnp forward, with the "
                "finite-difference witness.",
))


def plain_forward(x, gamma, *, eps=None):
    """x / sqrt(mean(x²) + eps) * gamma in plain jnp, the oracle."""
    eps = jnp.finfo(x.dtype).eps if eps is None else eps
    axes = tuple(range(x.ndim - gamma.ndim, x.ndim))
    gamma = gamma.reshape((1,) * (x.ndim - gamma.ndim) + gamma.shape)
    return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps) * gamma


def builder(shape, k):
    """x and dy standard normal of ``shape``; gamma ~ 1 + N(0, 0.1²) of the trailing k axes."""
    def build(key, dtype):
        rng = numpy_rng(key)
        return dict(x=jnp.asarray(rng.standard_normal(shape).astype(dtype)),
                    gamma=jnp.asarray((1.0 + 0.1 * rng.standard_normal(shape[len(shape) - k:]))
                                      .astype(dtype)),
                    dy=jnp.asarray(rng.standard_normal(shape).astype(dtype)))
    return build


def rmsnorm_case(name, shape, *, k=1, eps=None, tier="test", **kwargs):
    return vjp_case(name=name, family="rmsnorm", build=builder(shape, k),
                    forward=functools.partial(plain_forward, eps=eps),
                    backward=functools.partial(rmsnorm.backward, eps=eps),
                    primals=("x", "gamma"),
                    sizes=dict(shape="x".join(map(str, shape)), normalized=k,
                               eps="machine" if eps is None else eps), tier=tier, **kwargs)


# (label, shape, keywords, tier)
CASES = (
    ("rank3-normalized2", (3, 4, 6), dict(k=2), "test"),
    ("N8-D16", (8, 16), {}, "slow"),
    ("N1", (1, 16), {}, "slow"),
    ("D1", (6, 1), dict(eps=1e-3), "slow"),
    ("eps1e-5", (4, 5, 12), dict(eps=1e-5), "slow"),
    ("N512-D1024", (512, 1024), {}, "report"),
)

for label, shape, kw, tier in CASES:
    register(rmsnorm_case(f"rmsnorm/{label}", shape, tier=tier, **kw))

# The benchmark: layer norm's shape, (4096, 1024), manual vs jax.vjp, both compiled.
register(rmsnorm_case("rmsnorm/bench-4096x1024", (4096, 1024), tier="bench"))
