"""Network cases: manual.network's curvature of layer stacks against reference.network.

A net is written here as a spec, a tuple of entries (``linear(10)``, ``conv(8, 3,
padding=1)``, ``act("tanh")``, ``residual(...)``, ...): each entry makes one layer of
manual.network (which carries no sizes) and draws its parameters for the shape that
reaches it (``network_inputs``). Both sides get the same layer objects; the reference
(reference/network.py) reads only their class names and attributes and computes its own
plain-jnp forward, which JAX differentiates:

    grad                   vs jax.grad                      (FD witness on a random direction)
    per_sample_grads       vs jax.vmap(jax.grad) of each sample's own loss
    hvp                    vs jax.jvp(jax.grad)
    diagonal               hessian_diagonal vs the diagonal of jax.hessian (FD witness
                           e_iᵀ H e_i along one coordinate)
    gn_diagonal            gauss_newton_diagonal vs the diagonal of Jᵀ Λ J (J = jax.jacrev)
    blocks                 hessian_blocks vs the layer-diagonal slices of jax.hessian
    hessian                vs jax.hessian (FD witness vᵀ H v)
    gauss_newton           vs Jᵀ Λ J

Nets (NETS): every layer type and its options, and the combinations of the issue: an
MLP, a CNN with max and average pooling, a ResNet basic block, pre-LN transformer blocks
with causal and non-causal attention. Random draws keep every ReLU pre-activation and
every max-pool window's top two entries at least ``MARGIN`` apart (redrawn
deterministically until they are), so neither the oracle nor the witness sits on a kink
or a tie.

Tiers: the test tier is the gradient and the diagonal (with its witness) of the MLP as a
network, float64 (``make test``'s budget: each net's curvature code takes seconds to
compile); the slow tier, in every report, runs every function on every net in both
dtypes; the report tier holds the issue's CNN and ResNet block at full size (the diagonal
against jax.hessian, no witness: a kink-free draw at that size does not exist).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manual import network
from reference import network as oracle
from suite.cases import Case, Family, register, register_family
from suite.cases.common import numpy_rng
from suite.cases.mlp import BINARY_LOGISTIC, HUBER, SILU, custom_targets

__all__ = ["Entry", "linear", "conv", "act", "max_pool", "avg_pool", "flatten",
           "global_avg_pool", "layer_norm", "attention", "mean_over_time", "residual",
           "make_net", "param_count", "kink_margin", "network_inputs", "KINDS", "NETS",
           "BENCH_NETS", "SHARDED_NET", "MARGIN", "network_case"]

register_family(Family(
    name="network",
    title="Exact curvature of layer stacks: CNN, ResNet block, transformer block",
    description="manual.network: stagewise second-order backprop (Mizutani & Dreyfus) through "
                "any stack of Linear, Conv2d, Act, MaxPool2d, AvgPool2d, Flatten, "
                "GlobalAvgPool, LayerNorm, SelfAttention, MeanOverTime and Residual layers, "
                "each layer passing back its second-order costate Ω_in = Jᵀ Ω_out J + "
                "Σ_k δ_k ∇²y_k. Against JAX autodiff of an independent plain-jnp forward "
                "(reference/network.py): the exact Hessian diagonal against the diagonal of "
                "jax.hessian (with the finite-difference witness e_iᵀHe_i), the layer blocks "
                "and the whole Hessian against jax.hessian, the Gauss-Newton matrix against "
                "Jᵀ Λ J from jax.jacrev, hvp against jax.jvp of jax.grad, per-sample "
                "gradients against jax.vmap of jax.grad.",
))

MARGIN = 2e-3  # as suite.cases.common.mlp_inputs: FD steps move a pre-activation < 1e-3
_KINKED = ("relu", "leaky_relu")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One layer of a spec: ``make()`` the manual.network layer, ``draw(rng, shape,
    dtype)`` its params for input ``shape``, ``label`` for case names, ``inner`` the
    entries of a residual branch."""
    label: str
    make: Callable[[], Any]
    draw: Callable[[Any, tuple, Any], Any] = lambda rng, shape, dtype: ()
    inner: tuple = ()


def _weight(rng, shape, fan_in, dtype):
    return rng.normal(0.0, fan_in ** -0.5, shape).astype(dtype)


def _bias(rng, n, dtype):
    return rng.normal(0.0, 0.1, (n,)).astype(dtype)


def linear(m: int) -> Entry:
    """Linear to m features: w ~ N(0, 1/D), b ~ N(0, 0.1²)."""
    return Entry(f"L{m}", network.Linear,
                 lambda rng, s, dt: (_weight(rng, (s[-1], m), s[-1], dt), _bias(rng, m, dt)))


def conv(out_channels: int, kernel: int, **kw: Any) -> Entry:
    """Conv2d to ``out_channels`` with a square ``kernel``; w ~ N(0, 1/fan-in)."""
    groups = kw.get("groups", 1)

    def draw(rng, s, dt):
        c = s[1] // groups
        return (_weight(rng, (out_channels, c, kernel, kernel), c * kernel * kernel, dt),
                _bias(rng, out_channels, dt))

    opts = "".join(f"{k[0]}{v}" for k, v in kw.items())
    return Entry(f"C{out_channels}k{kernel}{opts}", lambda: network.Conv2d(**kw), draw)


def act(activation: Any) -> Entry:
    name = activation if isinstance(activation, str) else activation.name
    return Entry(name, lambda: network.Act(activation))


def max_pool(window: int, **kw: Any) -> Entry:
    opts = "".join(f"{k[0]}{v}" for k, v in kw.items())
    return Entry(f"MP{window}{opts}", lambda: network.MaxPool2d(window, **kw))


def avg_pool(window: int, **kw: Any) -> Entry:
    opts = "".join(f"{k[0]}{v}" for k, v in kw.items())
    return Entry(f"AP{window}{opts}", lambda: network.AvgPool2d(window, **kw))


def flatten() -> Entry:
    return Entry("F", network.Flatten)


def global_avg_pool() -> Entry:
    return Entry("GAP", network.GlobalAvgPool)


def layer_norm() -> Entry:
    """LayerNorm: γ ~ 1 + N(0, 0.1²), β ~ N(0, 0.1²) (off the identity, so both count)."""
    return Entry("LN", network.LayerNorm,
                 lambda rng, s, dt: ((1.0 + rng.normal(0.0, 0.1, (s[-1],))).astype(dt),
                                     _bias(rng, s[-1], dt)))


def attention(heads: int, *, causal: bool = False) -> Entry:
    """SelfAttention: each (D, D) ~ N(0, 1/D), drawn in the ravel order w_k, w_o, w_q, w_v."""
    def draw(rng, s, dt):
        return {k: _weight(rng, (s[-1], s[-1]), s[-1], dt) for k in ("w_k", "w_o", "w_q", "w_v")}
    return Entry(f"SA{heads}{'c' if causal else ''}",
                 lambda: network.SelfAttention(heads, causal=causal), draw)


def mean_over_time() -> Entry:
    return Entry("MT", network.MeanOverTime)


def residual(*entries: Entry) -> Entry:
    return Entry("R(" + ",".join(e.label for e in entries) + ")",
                 lambda: network.Residual(*make_net(entries)), inner=tuple(entries))


def make_net(spec: tuple) -> tuple:
    """The manual.network layers of a spec."""
    return tuple(e.make() for e in spec)


def _draw(spec, net, rng, shape, dtype):
    """Params (numpy, ``dtype``) for ``spec`` on inputs of ``shape``, walking the shapes
    with the oracle's layers (abstractly: nothing is computed)."""
    params = []
    for entry, layer in zip(spec, net, strict=True):
        if entry.inner:
            p = _draw(entry.inner, layer.layers, rng, shape, dtype)
        else:
            p = entry.draw(rng, shape, dtype)
        params.append(p)
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), p)
        shape = jax.eval_shape(lambda x, p, layer=layer: oracle.layer_forward(layer, p, x),
                               jax.ShapeDtypeStruct(shape, jnp.float32), abstract).shape
    return tuple(params)


def param_count(spec: tuple, x_shape: tuple) -> int:
    """P, the number of parameters of the net ``spec`` on inputs of ``x_shape``."""
    params = _draw(spec, make_net(spec), np.random.default_rng(0), x_shape, np.float32)
    return sum(a.size for a in jax.tree_util.tree_leaves(params))


def _pool_gap(layer, x):
    """The smallest gap between the largest and second-largest entry of a max-pool window,
    over the windows whose two are not both exactly 0: such a tie is a ReLU's zeros,
    whose derivatives are all 0, so wherever the gradient goes it carries 0."""
    kh = kw = int(oracle.option(layer, "window"))
    s = int(oracle.option(layer, "stride") or kh)
    p = int(oracle.option(layer, "padding", 0))
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    ho, wo = (padded.shape[2] - kh) // s + 1, (padded.shape[3] - kw) // s + 1
    taps = np.stack([padded[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                     for i in range(kh) for j in range(kw)])
    top2 = -np.sort(-taps, axis=0)[:2]
    gaps = (top2[0] - top2[1])[(top2[0] != 0) | (top2[1] != 0)]
    return float(gaps.min()) if gaps.size else math.inf


def kink_margin(net: tuple, params: Any, x: Any) -> float:
    """min over ReLU / leaky-ReLU pre-activations of |z| and over max-pool windows of the
    gap between the two largest entries (float64, through the oracle's layers)."""
    margin = math.inf
    x = np.asarray(x, np.float64)
    for layer, p in zip(net, jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params),
                        strict=True):
        kind = type(layer).__name__
        if kind == "Residual":
            margin = min(margin, kink_margin(layer.layers, p, x))
        elif kind == "Act" and _activation_name(layer) in _KINKED:
            margin = min(margin, float(np.min(np.abs(x))))
        elif kind == "MaxPool2d":
            margin = min(margin, _pool_gap(layer, x))
        with jax.enable_x64(True):
            x = np.asarray(oracle.layer_forward(layer, p, jnp.asarray(x)))
    return margin


def _activation_name(layer):
    a = layer.activation
    return a if isinstance(a, str) else a.name


def _kinked(net):
    for layer in net:
        kind = type(layer).__name__
        if kind == "Residual" and _kinked(layer.layers):
            return True
        if kind == "MaxPool2d" or (kind == "Act" and _activation_name(layer) in _KINKED):
            return True
    return False


def _targets(rng, logits, loss, dtype):
    """mse: N(0, 1) targets; cross-entropy: labels; a user's loss: suite.cases.mlp's
    targets for it (Huber's residuals on both sides of its kink, never near it)."""
    n, m = logits.shape
    if loss == "mse":
        return jnp.asarray(rng.normal(size=(n, m)).astype(dtype))
    if loss == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, m, size=(n,)), jnp.int32)
    return jnp.asarray(custom_targets(rng, logits, loss).astype(dtype))


def network_inputs(key: Any, spec: tuple, x_shape: tuple, dtype: Any, *, loss: Any,
               margin: float | None = MARGIN, tries: int = 200, with_v: bool = False) -> dict:
    """dict(params, x, y[, v]) for a case; redrawn until ``kink_margin >= margin``
    where the net has a kink (``margin=None``: no check, a large net's draw).

    Raises:
      ValueError: no kink-free draw in ``tries`` (make the net or the batch smaller).
    """
    rng = numpy_rng(key)
    net = make_net(spec)
    check = margin is not None and _kinked(net)
    for _ in range(tries if check else 1):
        params = jax.tree_util.tree_map(jnp.asarray, _draw(spec, net, rng, x_shape, dtype))
        x = jnp.asarray(rng.normal(size=x_shape).astype(dtype))
        if check and kink_margin(net, params, x) < margin:
            continue
        logits = np.asarray(oracle.forward(net, params, x), np.float64)
        out = dict(params=params, x=x, y=_targets(rng, logits, loss, dtype))
        if with_v:
            flat, unravel = ravel_pytree(params)
            out["v"] = unravel(jnp.asarray(rng.normal(size=flat.shape).astype(dtype)))
        return out
    raise ValueError(f"no kink-free draw in {tries} tries for x {x_shape}")


def _loss_label(loss):
    return {"mse": "mse", "softmax_cross_entropy": "ce"}.get(loss, getattr(loss, "name", loss))


# kind -> (manual function, oracle, FD order, Hessian form); None: no witness
KINDS = {
    "grad": (network.grad, oracle.grad, 1, "dense"),
    "per_sample_grads": (network.per_sample_grads, oracle.per_sample_grads, None, "dense"),
    "hvp": (network.hvp, oracle.hvp, None, "dense"),
    "diagonal": (network.hessian_diagonal, oracle.hessian_diagonal, 2, "diagonal"),
    "gn_diagonal": (network.gauss_newton_diagonal, oracle.gauss_newton_diagonal, None, "dense"),
    "blocks": (network.hessian_blocks, oracle.hessian_blocks, None, "dense"),
    "hessian": (network.hessian, oracle.hessian, 2, "dense"),
    "gauss_newton": (network.gauss_newton, oracle.gauss_newton, None, "dense"),
}


def network_case(kind: str, label: str, spec: tuple, x_shape: tuple, loss: Any, *,
                 tier: str, dtypes: tuple = ("float32", "float64"), witness: bool = True,
                 manual_net: tuple | None = None) -> Case:
    """A Case: ``KINDS[kind]`` of the net ``spec`` on inputs of ``x_shape``.

    ``witness=False`` drops the finite-difference witness (and the kink-free draw);
    ``manual_net`` hands the manual side other layers than the reference (a planted bug:
    an Act whose f'' is wrong, say).
    """
    manual_fn, oracle_fn, order, form = KINDS[kind]
    net = make_net(spec)
    mine = net if manual_net is None else manual_net
    hvp = kind == "hvp"

    def build(key, dtype):
        return network_inputs(key, spec, x_shape, dtype, loss=loss, with_v=hvp,
                          margin=MARGIN if witness else None)

    def args(i):
        return (i["params"], i["x"], i["y"]) + ((i["v"],) if hvp else ())

    objective = None
    if witness and order is not None:
        def objective(i):
            return oracle.loss(net, i["params"], i["x"], i["y"], loss=loss)
    return Case(
        name=f"network/{kind}/{label}-{_loss_label(loss)}-N{x_shape[0]}", family="network",
        build=build,
        manual=lambda i: manual_fn(mine, *args(i), loss=loss),
        reference=lambda i: oracle_fn(net, *args(i), loss=loss),
        objective=objective, wrt=("params",) if objective else (), order=order or 1,
        hessian_form=form, dtypes=dtypes, tier=tier,
        sizes=dict(x="x".join(map(str, x_shape)), P=param_count(spec, x_shape)))


# --- the nets ---------------------------------------------------------------------------

def _transformer(causal, d=8, hidden=16, classes=3, heads=2):
    return (residual(layer_norm(), attention(heads, causal=causal)),
            residual(layer_norm(), linear(hidden), act("gelu"), linear(d)),
            layer_norm(), mean_over_time(), linear(classes))


# label -> (spec, x shape, loss)
NETS = {
    "mlp": ((linear(5), act("tanh"), linear(6), act(SILU), linear(3)), (4, 4),
            "softmax_cross_entropy"),
    "cnn": ((conv(4, 3, padding=1), act("relu"), max_pool(2), conv(5, 3, padding=1),
             act("tanh"), avg_pool(2), flatten(), linear(3)), (2, 3, 8, 8),
            "softmax_cross_entropy"),
    "resnet": ((conv(4, 3, padding=1), act("relu"),
                residual(conv(4, 3, padding=1), act("relu"), conv(4, 3, padding=1)),
                act("relu"), global_avg_pool(), linear(3)), (2, 3, 6, 6),
               "softmax_cross_entropy"),
    "transformer-causal": (_transformer(True), (2, 4, 8), "softmax_cross_entropy"),
    "transformer": (_transformer(False), (2, 4, 8), "mse"),
    # every layer option: strides, dilation, groups, "same", pools with padding
    "conv-options": ((conv(4, 3, stride=2, padding=1), act("softplus"),
                      conv(4, 2, dilation=2, groups=2), act("sigmoid"),
                      conv(2, 3, padding="same"), flatten(), linear(2)), (2, 2, 9, 9),
                     "mse"),
    "pool-options": ((conv(3, 3), act("leaky_relu"), max_pool(3, stride=2, padding=1),
                      avg_pool(3, stride=1, padding=1), global_avg_pool(), linear(2)),
                     (2, 2, 9, 9), BINARY_LOGISTIC),
    "sequence": ((linear(6), act("softplus"), layer_norm(), attention(3),
                  residual(linear(6), act("sigmoid")), mean_over_time(), linear(2)),
                 (3, 5, 4), HUBER),
}

# The three benchmark shapes (float64, softmax cross-entropy, 10 classes).
BENCH_NETS = {
    "cnn": ((conv(8, 3, padding=1), act("relu"), max_pool(2), conv(16, 3, padding=1),
             act("tanh"), avg_pool(2), flatten(), linear(10)), (32, 3, 8, 8)),
    "resnet": ((conv(16, 3, padding=1), act("relu"),
                residual(conv(16, 3, padding=1), act("relu"), conv(16, 3, padding=1)),
                act("relu"), global_avg_pool(), linear(10)), (32, 3, 8, 8)),
    "transformer": ((residual(layer_norm(), attention(4, causal=True)),
                     residual(layer_norm(), linear(128), act("gelu"), linear(32)),
                     layer_norm(), mean_over_time(), linear(10)), (8, 8, 32)),
}

# The net of the sharded checks (suite.sharded's network functions; N = 8 on four devices).
SHARDED_NET = ((conv(3, 3, padding=1), act("tanh"),
                residual(conv(3, 3, padding=1), act("softplus"), conv(3, 3, padding=1)),
                global_avg_pool(), linear(3)), (8, 2, 5, 5), "softmax_cross_entropy")

F64 = ("float64",)
# make test holds two cheap cases (its budget: a network's Hessian code takes seconds to
# compile): the gradient (the family's first case, which test_registry plants bugs in)
# and the exact diagonal with its witness, of the MLP written as a network, float64. The
# slow tier (in every report) runs every function on every net, in both dtypes.
TEST = (("grad", "mlp"), ("diagonal", "mlp"))


def _register_all():
    for kind, label in TEST:
        spec, shape, loss = NETS[label]
        register(network_case(kind, label, spec, shape, loss, tier="test", dtypes=F64))
    for label, (spec, shape, loss) in NETS.items():
        for kind in KINDS:
            if (kind, label) in TEST:  # its float32 row, in the slow tier
                case = network_case(kind, label, spec, shape, loss, tier="slow",
                                    dtypes=("float32",))
                register(dataclasses.replace(case, name=case.name + "-f32"))
            else:
                register(network_case(kind, label, spec, shape, loss, tier="slow"))
    for label in ("cnn", "resnet"):
        spec, shape = BENCH_NETS[label]
        register(network_case("diagonal", f"{label}-full", spec, shape, "softmax_cross_entropy",
                              tier="report", dtypes=F64, witness=False))


_register_all()
