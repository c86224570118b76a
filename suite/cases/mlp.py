"""MLP family: activations (f, f', f''), losses (gradient, per-sample Hessian) and the
L-layer network's gradient by the costate recursion, each against JAX autodiff.

Case names:
    mlp/net/<activation>/<loss>/L<depth>   manual.mlp.grad vs jax.grad of manual.mlp.loss
                                           (FD witness: manual.mlp.loss)
    mlp/act/<activation>                   f, f', f'' vs jax.nn's f, jax.grad, grad-of-grad
    mlp/loss/<loss>[/...]                  loss.grad vs jax.grad of loss.value
                                           (FD witness: loss.value)
    mlp/loss/<loss>/hessian                loss.hessian vs the per-sample diagonal blocks
                                           of jax.hessian of loss.value, times N
    mlp/custom/...                         the extension points: a user's Activation (SiLU)
                                           and Loss (binary logistic, Huber), and one
                                           activation per hidden layer, through mlp.grad
    mlp/bench/...                          784-512-512-512-10, batch 256 (bench only)

SILU, BINARY_LOGISTIC and HUBER are written here as a user would write them: jax.numpy
forward code and hand-derived derivatives, handed to manual/ as objects. Their oracles
differentiate only the forward code (f, value), never the derivatives under test.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from manual import activations, losses, mlp
from manual.activations import Activation
from manual.losses import Loss
from reference import autodiff
from suite.cases import Case, Family, register, register_family
from suite.cases.common import KINKED, mlp_inputs, numpy_rng

__all__ = ["ACTIVATIONS", "LOSSES", "SILU", "BINARY_LOGISTIC", "HUBER", "CUSTOM_LOSSES",
           "custom_targets", "net_inputs", "net_case", "activation_case", "loss_grad_case",
           "loss_hessian_case", "per_sample_hessian"]

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "softplus", "gelu")
LOSSES = ("mse", "softmax_cross_entropy")


# --- the extension points, used as a user would ------------------------------------------

def _silu_df(z):
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_d2f(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


# SiLU (swish), f = z s(z): f' = s (1 + z (1 - s)), f'' = s (1 - s) (2 + z (1 - 2 s))
SILU = Activation("silu", f=lambda z: z * jax.nn.sigmoid(z), df=_silu_df, d2f=_silu_d2f)


def _logistic_hessian(z, y):
    s = jax.nn.sigmoid(z)
    return (s * (1 - s))[:, :, None] * jnp.eye(z.shape[1], dtype=z.dtype)[None, :, :]


# Binary logistic (one independent logistic per logit, targets y in {0, 1}):
# ℓ = Σ_m softplus(z_m) - y_m z_m,  ℓ' = s(z) - y,  ℓ'' = diag(s (1 - s)).
BINARY_LOGISTIC = Loss(
    "binary_logistic",
    value=lambda z, y: jnp.sum(jax.nn.softplus(z) - y * z) / z.shape[0],
    grad=lambda z, y: (jax.nn.sigmoid(z) - y) / z.shape[0],
    hessian=_logistic_hessian)


def _huber_value(z, y):
    r = z - y
    return jnp.sum(jnp.where(jnp.abs(r) <= 1, 0.5 * r * r, jnp.abs(r) - 0.5)) / z.shape[0]


def _huber_hessian(z, y):
    inside = (jnp.abs(z - y) <= 1).astype(z.dtype)
    return inside[:, :, None] * jnp.eye(z.shape[1], dtype=z.dtype)[None, :, :]


# Huber with threshold 1 on every logit: ℓ = Σ_m ½ r² (|r| <= 1) or |r| - ½, r = z - y;
# ℓ' = clip(r, -1, 1), ℓ'' = diag([|r| <= 1]). Inputs keep |r| away from the kink at 1.
HUBER = Loss("huber", value=_huber_value,
             grad=lambda z, y: jnp.clip(z - y, -1, 1) / z.shape[0], hessian=_huber_hessian)

CUSTOM_LOSSES = {loss.name: loss for loss in (BINARY_LOGISTIC, HUBER)}
HUBER_GAP = (0.9, 1.1)  # |z - y| never falls in this band around Huber's kink


def custom_targets(rng, logits, loss):
    """Targets for a user's loss, given the logits they will meet (float64 numpy)."""
    if loss.name == "binary_logistic":
        return rng.integers(0, 2, size=logits.shape).astype(np.float64)
    if loss.name == "huber":  # residuals on both sides of the kink, never within HUBER_GAP
        magnitude = np.where(rng.random(logits.shape) < 0.5, rng.uniform(0.0, HUBER_GAP[0],
                             logits.shape), rng.uniform(HUBER_GAP[1], 2.5, logits.shape))
        return logits - np.where(rng.random(logits.shape) < 0.5, -magnitude, magnitude)
    raise ValueError(f"no targets for loss {loss.name!r}")


def _forward_np(params, x, acts):
    """Every hidden pre-activation and the logits, in float64 (for kink margins, targets)."""
    a, zs = np.asarray(x, np.float64), []
    for l, (w, b) in enumerate(params):
        z = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)[None, :]
        zs.append(z)
        if l < len(params) - 1:
            a = np.asarray(acts[l].f(jnp.asarray(z)), np.float64)
    return zs


def net_inputs(key, widths, n, dtype, *, activation, loss, margin=2e-3, tries=1000):
    """dict(params, x, y) for any activation (a name, an Activation, one per hidden layer)
    and any loss (a name or a Loss): kinked hidden layers keep |z| >= margin, a user's
    loss gets its targets from ``custom_targets``. Names alone: exactly ``mlp_inputs``."""
    if isinstance(activation, str) and isinstance(loss, str):
        return mlp_inputs(key, widths, n, dtype, loss=loss, activation=activation,
                          margin=margin, tries=tries)
    acts = activations.per_layer(activation, len(widths) - 2)
    target_loss = loss if isinstance(loss, str) else "mse"
    rng_key = key
    for attempt in range(tries):
        key = jax.random.fold_in(rng_key, attempt)
        inputs = mlp_inputs(key, widths, n, "float64", loss=target_loss, activation="tanh")
        zs = _forward_np(inputs["params"], inputs["x"], acts)
        if all(np.abs(z).min() >= margin for z, act in zip(zs[:-1], acts, strict=True)
               if act.name in KINKED):
            break
    else:
        raise ValueError(f"no kink-free draw in {tries} tries for widths {widths}, N={n}")
    if not isinstance(loss, str):
        inputs["y"] = custom_targets(numpy_rng(key), zs[-1], loss)
    return jax.tree_util.tree_map(
        lambda t: t.astype(dtype) if jnp.issubdtype(t.dtype, jnp.floating) else t,
        jax.tree_util.tree_map(jnp.asarray, inputs))


register_family(Family(
    name="mlp",
    title="L-layer network: activations, losses, costate recursion",
    description="z_l = a_{l-1} W_l + b_l, a_l = f(z_l), logits z_L, batch-mean loss + "
                "½λΣ||W_l||². Backward as the Kelley-Bryson costate recursion: "
                "δ_L = ∂loss/∂z_L, δ_l = f'(z_l) ⊙ (δ_{l+1} W_{l+1}ᵀ), "
                "∂E/∂W_l = a_{l-1}ᵀ δ_l + λW_l, ∂E/∂b_l = Σₙ δ_l (Hoey; Grosse; "
                "Mizutani, Dreyfus & Nishio). Activation rows check f, f', f'' elementwise "
                "against jax.nn and (grad-of-)jax.grad; loss rows check the logit gradient "
                "(Sadowski) and the per-sample Hessian against jax.hessian.",
))


# --- the network: every activation x both losses x depths 1..5 --------------------------

# Widths [n_0, hidden..., n_L] per depth. Variant 0 of every depth > 1 has a hidden layer
# of width 1 (a bottleneck: the costate passes through a single unit); the others are
# non-uniform. Output width 1 only appears with mse (cross-entropy over one class is 0).
WIDTHS = {
    1: ([3, 2], [1, 4], [6, 3]),
    2: ([4, 1, 3], [3, 6, 2], [5, 2, 4]),
    3: ([5, 7, 1, 3], [2, 8, 3, 4], [4, 3, 6, 2]),
    4: ([3, 6, 1, 5, 2], [6, 2, 7, 4, 3], [2, 5, 5, 3, 4]),
    5: ([4, 6, 3, 1, 5, 2], [3, 5, 8, 5, 3, 4], [5, 2, 6, 4, 7, 3]),
}
MSE_ONLY = {1: [5, 1], 3: [3, 4, 2, 1]}  # scalar regression heads, for mse
BATCHES = (1, 3, 8, 16)
# `make test` runs one config per activation, alternating the loss and cycling the depth
# (every activation, both losses, every depth 1..5); the other 54 configs are tier
# "slow" (pytest -m slow and every report). Compile time is what costs here.


def _in_test_tier(i, j, depth):
    return j == i % 2 and depth == i % 5 + 1


def _net_config(i, act, j, loss, depth):
    """(widths, N, l2, tier) for activation #i, loss #j at ``depth``, varied across the cross."""
    tier = "test" if _in_test_tier(i, j, depth) else "slow"
    variants = WIDTHS[depth]
    # the test tier takes the bottleneck variant, so `make test` sees a width-1 layer
    widths = variants[0 if tier == "test" else (i + j) % len(variants)]
    if loss == "mse" and depth in MSE_ONLY and i % 2 == 1:
        widths = MSE_ONLY[depth]
    n = BATCHES[(2 * i + j + depth) % len(BATCHES)]
    l2 = 0.1 if (i + j + depth) % 2 else 0.0
    return widths, n, l2, tier


def _every_layer_lives(params, x):
    """Every hidden relu layer has an active unit for some sample.

    A dead layer is a legitimate network but a weak test: a width-1 bottleneck that is
    dead on the whole batch makes every gradient below it exactly 0 on both sides.
    """
    a = np.asarray(x, np.float64)
    for w, b in params[:-1]:
        z = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)[None, :]
        if not (z > 0).any():
            return False
        a = np.maximum(z, 0.0)
    return True


def net_case(name, widths, n, *, activation, loss, l2=0.0, tier="test", margin=2e-3):
    """manual.mlp.grad against jax.grad of manual.mlp.loss, FD witness on the loss.

    ``margin`` is the kink-free distance mlp_inputs redraws relu/leaky_relu inputs for;
    benchmarks (no finite differences, and both sides share JAX's kink convention) take 0.
    """
    def draw(key, dtype):
        return net_inputs(key, widths, n, dtype, activation=activation, loss=loss,
                          margin=margin)

    def build(key, dtype):
        for attempt in range(100):
            inputs = draw(jax.random.fold_in(key, attempt), dtype)
            if activation != "relu" or _every_layer_lives(inputs["params"], inputs["x"]):
                return inputs
        raise ValueError(f"{name}: no draw in 100 where every relu layer is active somewhere")

    config = dict(activation=activation, loss=loss, l2=l2)

    def objective(inputs):
        return mlp.loss(inputs["params"], inputs["x"], inputs["y"], **config)

    return Case(
        name=name, family="mlp", build=build,
        manual=lambda inputs: mlp.grad(inputs["params"], inputs["x"], inputs["y"], **config),
        reference=lambda inputs: autodiff.grad(
            lambda p: mlp.loss(p, inputs["x"], inputs["y"], **config))(inputs["params"]),
        objective=objective, wrt=("params",),
        sizes=dict(widths="-".join(map(str, widths)), N=n, l2=l2,
                   **({} if isinstance(activation, str) else
                      {"activation": activation_label(activation)})), tier=tier)


def activation_label(activation):
    """A short name for an activation argument: "silu", or "tanh,silu,relu" per layer."""
    if isinstance(activation, (tuple, list)):
        return ",".join(activation_label(a) for a in activation)
    return activation if isinstance(activation, str) else activation.name


for _i, _act in enumerate(ACTIVATIONS):
    for _j, _loss in enumerate(LOSSES):
        for _depth in range(1, 6):
            _widths, _n, _l2, _tier = _net_config(_i, _act, _j, _loss, _depth)
            register(net_case(f"mlp/net/{_act}/{_loss}/L{_depth}", _widths, _n,
                              activation=_act, loss=_loss, l2=_l2, tier=_tier))

# The extension points through mlp.grad: a user's activation and losses, and one
# activation per hidden layer (a kinked one among them, kept off its kink).
CUSTOM_NETS = (
    ("per_layer/huber/L4", [3, 5, 6, 4, 2], 8, ("tanh", SILU, "relu"), HUBER, 0.0, "test"),
    ("silu/binary_logistic/L3", [4, 6, 5, 2], 7, SILU, BINARY_LOGISTIC, 0.1, "slow"),
    ("per_layer/softmax_cross_entropy/L3", [5, 4, 6, 3], 5, ("gelu", "sigmoid"),
     "softmax_cross_entropy", 0.1, "slow"),
    ("silu/huber/L2", [4, 7, 3], 16, SILU, HUBER, 0.0, "slow"),
    ("per_layer/binary_logistic/L5", [3, 5, 4, 6, 3, 1], 8,
     (SILU, "softplus", "leaky_relu", "tanh"), BINARY_LOGISTIC, 0.1, "slow"),
)
for _name, _widths, _n, _act, _loss, _l2, _tier in CUSTOM_NETS:
    register(net_case(f"mlp/custom/{_name}", _widths, _n, activation=_act, loss=_loss, l2=_l2,
                      tier=_tier))

# Wide and deep enough to average many rounding errors: the report only.
register(net_case("mlp/net/tanh/softmax_cross_entropy/wide", [64, 128, 128, 128, 10], 128,
                  activation="tanh", loss="softmax_cross_entropy", l2=1e-3, tier="report"))
# (relu kept smaller: a kink-free draw of every pre-activation gets rarer with each one)
register(net_case("mlp/net/relu/mse/wide", [16, 48, 48, 8], 16,
                  activation="relu", loss="mse", l2=0.0, tier="report"))


# --- activations: f, f', f'' elementwise -------------------------------------------------

# The oracle's f comes from jax.nn (not from manual/), its derivatives from jax.grad.
REFERENCE_F = {
    "relu": jax.nn.relu,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=activations.LEAKY_SLOPE),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,  # the user's SILU above is checked against jax.nn's own
}
ActivationValues = collections.namedtuple("ActivationValues", "f df d2f")


def _elementwise(fn):
    """fn applied to every entry of an array through a scalar function (vmap over a ravel)."""
    return lambda z: jax.vmap(fn)(z.ravel()).reshape(z.shape)


def activation_case(name, *, scale=2.5, shape=(4, 33)):
    act = name if isinstance(name, Activation) else activations.get(name)
    name, f_ref = act.name, REFERENCE_F[act.name]

    def build(key, dtype):
        # |z| >= 0.1 for every activation (the kinked ones need it, the others don't mind);
        # the scale reaches the saturated tails of sigmoid and tanh (|z| up to ~10).
        z = numpy_rng(key).normal(size=shape)
        return dict(z=jnp.asarray(scale * z + 0.1 * np.sign(z), dtype))

    def manual(inputs):
        z = inputs["z"]
        return ActivationValues(act.f(z), act.df(z), act.d2f(z))

    def reference(inputs):
        z = inputs["z"]
        df = jax.grad(f_ref)
        return ActivationValues(f_ref(z), _elementwise(df)(z), _elementwise(jax.grad(df))(z))

    return Case(name=f"mlp/act/{name}", family="mlp", build=build, manual=manual,
                reference=reference, sizes=dict(z="x".join(map(str, shape)),
                                                kinked=name in KINKED))


for _act in ACTIVATIONS + (SILU,):
    register(activation_case(_act))


# --- losses: gradient and per-sample Hessian in the logits ------------------------------

def _loss_inputs(key, n, m, loss, dtype, logit_scale):
    rng = numpy_rng(key)  # host-side draws: no sampler compile per shape
    z = rng.normal(size=(n, m))
    if logit_scale:
        # levels {-1, 0, 1} x logit_scale plus O(1) offsets: ties at each level keep the
        # softmax non-trivial while the logits reach ±1e4
        z = z + logit_scale * rng.integers(-1, 2, size=(n, m))
    if isinstance(loss, Loss):  # a user's loss: its own targets
        return dict(logits=jnp.asarray(z, dtype),
                    y=jnp.asarray(custom_targets(rng, z, loss), dtype))
    if loss == "mse":
        return dict(logits=jnp.asarray(z, dtype), y=jnp.asarray(rng.normal(size=(n, m)), dtype))
    return dict(logits=jnp.asarray(z, dtype),
                y=jnp.asarray(rng.integers(0, m, size=(n,)), jnp.int32))


def loss_grad_case(name, loss, n, m, *, logit_scale=0.0, tier="test"):
    fn = losses.get(loss)
    # No finite-difference witness at logits of 1e4: the loss is then ~1e4, its rounding
    # ~1e4·eps ≈ 2e-12, and a difference quotient with h ≈ 7e-4 cannot resolve the
    # gradient to the witness's 1e-9 (it measures ~1e-8). jax.grad is the oracle there.
    witness = {} if logit_scale else dict(
        objective=lambda inputs: fn.value(inputs["logits"], inputs["y"]), wrt=("logits",))
    return Case(
        name=name, family="mlp",
        build=lambda key, dtype: _loss_inputs(key, n, m, loss, dtype, logit_scale),
        manual=lambda inputs: fn.grad(inputs["logits"], inputs["y"]),
        reference=lambda inputs: autodiff.grad(fn.value)(inputs["logits"], inputs["y"]),
        sizes=dict(N=n, M=m, **({"logits": f"±{logit_scale:g}"} if logit_scale else {})),
        tier=tier, **witness)


def per_sample_hessian(value, logits, y):
    """Diagonal blocks H[n, :, n, :] of jax.hessian of the batch mean, times N.

    The batch mean couples no two samples, so these blocks are all of the Hessian; times N
    they are each sample's own loss Hessian.
    """
    n = logits.shape[0]
    full = jax.hessian(value)(logits, y)  # (N, M, N, M)
    rows = jnp.arange(n)
    return n * full[rows, :, rows, :]  # advanced indices apart: (N, M, M), [k, i, j] = H[k,i,k,j]


def loss_hessian_case(name, loss, n, m, *, logit_scale=0.0, tier="test"):
    fn = losses.get(loss)
    return Case(
        name=name, family="mlp",
        build=lambda key, dtype: _loss_inputs(key, n, m, loss, dtype, logit_scale),
        manual=lambda inputs: fn.hessian(inputs["logits"], inputs["y"]),
        reference=lambda inputs: per_sample_hessian(fn.value, inputs["logits"], inputs["y"]),
        sizes=dict(N=n, M=m, **({"logits": f"±{logit_scale:g}"} if logit_scale else {})),
        tier=tier)


for _loss in LOSSES:
    register(loss_grad_case(f"mlp/loss/{_loss}", _loss, 7, 5))
    register(loss_grad_case(f"mlp/loss/{_loss}/N1", _loss, 1, 3, tier="slow"))
    register(loss_grad_case(f"mlp/loss/{_loss}/large_logits", _loss, 6, 4, logit_scale=1e4,
                            tier="test" if _loss == "softmax_cross_entropy" else "slow"))
    register(loss_hessian_case(f"mlp/loss/{_loss}/hessian", _loss, 5, 4))
register(loss_hessian_case("mlp/loss/softmax_cross_entropy/hessian/large_logits",
                           "softmax_cross_entropy", 6, 4, logit_scale=1e4))
for _loss in CUSTOM_LOSSES.values():  # a user's Loss: the same two checks
    register(loss_grad_case(f"mlp/loss/{_loss.name}", _loss, 7, 3))
    register(loss_hessian_case(f"mlp/loss/{_loss.name}/hessian", _loss, 5, 3,
                               tier="test" if _loss is HUBER else "slow"))


# --- benchmark: manual grad vs jax.grad, both compiled ----------------------------------

for _act in ("tanh", "relu"):
    register(net_case(f"mlp/bench/{_act}/784-512-512-512-10", [784, 512, 512, 512, 10], 256,
                      activation=_act, loss="softmax_cross_entropy", tier="bench", margin=0.0))
