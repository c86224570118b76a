"""Second-order stagewise backprop cases (Mizutani & Dreyfus 2006, 2008).

Three derivations of manual.stagewise, each against its own oracle:

    hessian       vs jax.hessian of manual.mlp.loss over ravel_pytree(params)
                  (with the float64 finite-difference witness on vᵀ H v)
    hvp           vs jax.jvp of jax.grad of manual.mlp.loss (reference.autodiff.hvp)
    gauss_newton  vs Jᵀ Λ J + λ I_weights, J = jax.jacrev of the logits, Λ the
                  per-sample loss Hessians / N from jax.hessian of a loss written here,
                  independently of manual.losses

The test tier is a covering design over (depth 1..5, activation, loss, l2, N); the slow
tier (run by the report) sweeps every (activation, depth) pair with the other factors
rotated; the bench tier is the tanh MLP at P ≈ 1k, 3k, 10k against jax.hessian.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from manual import mlp, stagewise
from reference import autodiff
from suite.cases import Case, Family, register, register_family
from suite.cases.common import mlp_inputs, normal, split

register_family(Family(
    name="stagewise",
    title="Second-order stagewise backprop: exact MLP Hessian, Gauss-Newton, Hessian-vector",
    description="Stagewise second-order backprop (Mizutani & Dreyfus, IJCNN 2006; Neural "
                "Networks 2008): second-order costates Ω_l = D W Ω Wᵀ D + diag(f'' ⊙ δ Wᵀ) and "
                "mixed costates ∂²E/∂z_l∂θ_m propagated back stage by stage; every Hessian block "
                "(l <= m) one batched product over the samples, mirrored. Against jax.hessian "
                "(with the finite-difference witness on vᵀHv), hvp (Pearlmutter's R-operator) "
                "against jax.jvp of jax.grad, Gauss-Newton against Jᵀ Λ J from jax.jacrev.",
))

ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "relu")
LOSSES = ("mse", "softmax_cross_entropy")
_SHORT = {"mse": "mse", "softmax_cross_entropy": "ce"}
# Hidden widths by depth (all different, so a transposed block cannot pass by accident).
_HIDDEN = (5, 6, 4, 7)


def widths_for(depth, n_in=4, n_out=3):
    return [n_in] + list(_HIDDEN[:depth - 1]) + [n_out]


def _kwargs(spec):
    return dict(activation=spec["activation"], loss=spec["loss"], l2=spec["l2"])


def _builder(widths, n, activation, loss, with_v=False):
    def build(key, dtype):
        k = split(key, ["net", "v"])
        inputs = mlp_inputs(k["net"], widths, n, dtype, loss=loss, activation=activation)
        if with_v:  # a direction for the Hessian-vector product, params-shaped
            flat, unravel = ravel_pytree(inputs["params"])
            inputs["v"] = unravel(normal(k["v"], flat.shape, dtype))
        return inputs
    return build


def weight_mask(params):
    """1 at the weight coordinates of ravel_pytree(params), 0 at the biases."""
    return ravel_pytree(tuple((jnp.ones_like(w), jnp.zeros_like(b)) for w, b in params))[0]


def _sample_loss(loss):
    """One sample's loss in its logits, written independently of manual.losses."""
    if loss == "mse":
        return lambda z, y: 0.5 * jnp.sum((z - y) ** 2)
    return lambda z, y: jax.nn.logsumexp(z) - z[y]


def gauss_newton_reference(params, x, y, *, activation, loss, l2):
    """Jᵀ Λ J + λ I_weights with J = jacrev of the logits and Λₙ = jax.hessian(ℓ)(zₙ) / N."""
    jac = autodiff.jacobian(mlp.forward, params, x, activation=activation)  # (N, M, P)
    logits = mlp.forward(params, x, activation=activation)
    lam = jax.vmap(jax.hessian(_sample_loss(loss)))(logits, y) / x.shape[0]  # (N, M, M)
    gn = jnp.einsum("nap,nab,nbq->pq", jac, lam, jac)
    return gn + jnp.diag(l2 * weight_mask(params).astype(gn.dtype))


def _label(kind, spec):
    return (f"stagewise/{kind}/{spec['activation']}-{_SHORT[spec['loss']]}-d{spec['depth']}"
            f"-N{spec['n']}-l2{spec['l2']:g}" + spec.get("suffix", ""))


def hessian_case(spec, tier):
    kw = _kwargs(spec)
    widths = spec.get("widths") or widths_for(spec["depth"])
    return Case(
        name=_label("hessian", spec), family="stagewise",
        build=_builder(widths, spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"], **kw),
        objective=lambda i: mlp.loss(i["params"], i["x"], i["y"], **kw),
        wrt=("params",), order=2, tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")),
        sizes=dict(widths="-".join(map(str, widths)), N=spec["n"],
                   P=sum((a + 1) * b for a, b in zip(widths, widths[1:]))))


def hvp_case(spec, tier):
    kw = _kwargs(spec)
    widths = widths_for(spec["depth"])

    def reference(i):
        return autodiff.hvp(lambda p: mlp.loss(p, i["x"], i["y"], **kw), i["params"], i["v"])

    return Case(
        name=_label("hvp", spec), family="stagewise",
        build=_builder(widths, spec["n"], spec["activation"], spec["loss"], with_v=True),
        manual=lambda i: stagewise.hvp(i["params"], i["x"], i["y"], i["v"], **kw),
        reference=reference, tier=tier,
        sizes=dict(widths="-".join(map(str, widths)), N=spec["n"]))


def gauss_newton_case(spec, tier):
    kw = _kwargs(spec)
    widths = widths_for(spec["depth"])
    return Case(
        name=_label("gauss_newton", spec), family="stagewise",
        build=_builder(widths, spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.gauss_newton(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: gauss_newton_reference(i["params"], i["x"], i["y"], **kw),
        tier=tier, sizes=dict(widths="-".join(map(str, widths)), N=spec["n"]))


def _spec(activation, loss, depth, n, l2, **extra):
    return dict(activation=activation, loss=loss, depth=depth, n=n, l2=l2, **extra)


# Test tier: a covering design. Every depth, activation, loss, l2 and N appears, each
# activation with both losses, and the deep nets with the curved activations.
TEST_HESSIANS = (
    _spec("tanh", "mse", 1, 1, 0.0),
    _spec("tanh", "softmax_cross_entropy", 3, 7, 0.1),
    _spec("sigmoid", "mse", 2, 64, 0.1),
    _spec("sigmoid", "softmax_cross_entropy", 4, 1, 0.0),
    _spec("softplus", "softmax_cross_entropy", 4, 7, 0.0),
    _spec("softplus", "mse", 5, 64, 0.1),
    _spec("gelu", "mse", 5, 7, 0.1),
    _spec("gelu", "softmax_cross_entropy", 2, 64, 0.0),
    _spec("relu", "softmax_cross_entropy", 2, 7, 0.1),
    _spec("relu", "mse", 3, 64, 0.0),
)
TEST_HVPS = (
    _spec("tanh", "mse", 3, 7, 0.1),
    _spec("relu", "softmax_cross_entropy", 2, 64, 0.0),
    _spec("gelu", "softmax_cross_entropy", 5, 1, 0.1),
)
TEST_GAUSS_NEWTONS = (
    _spec("tanh", "softmax_cross_entropy", 2, 7, 0.1),
    _spec("sigmoid", "mse", 3, 64, 0.0),
    _spec("softplus", "softmax_cross_entropy", 5, 1, 0.0),
)


def _slow_specs():
    """Every (activation, depth) pair; loss, N and l2 rotate so each pair differs."""
    out = []
    for i, act in enumerate(ACTIVATIONS):
        for depth in range(1, 6):
            out.append(_spec(act, LOSSES[(i + depth) % 2], depth, (1, 7, 64)[(i + 2 * depth) % 3],
                             (0.0, 0.1)[(i + depth // 2) % 2]))
    return out


def _register_all():
    for spec in TEST_HESSIANS:
        register(hessian_case(spec, "test"))
    for spec in TEST_HVPS:
        register(hvp_case(spec, "test"))
    for spec in TEST_GAUSS_NEWTONS:
        register(gauss_newton_case(spec, "test"))
    taken = ({_label("hessian", s) for s in TEST_HESSIANS} | {_label("hvp", s) for s in TEST_HVPS}
             | {_label("gauss_newton", s) for s in TEST_GAUSS_NEWTONS})
    for spec in _slow_specs():
        # hvp and Gauss-Newton once per activation (depth 4), with the other loss
        kinds = (("hessian", hessian_case, spec),)
        other = dict(spec, loss=LOSSES[1 - LOSSES.index(spec["loss"])])
        if spec["depth"] == 4:
            kinds += (("hvp", hvp_case, other), ("gauss_newton", gauss_newton_case, other))
        for kind, make, s in kinds:
            if _label(kind, s) not in taken:
                register(make(s, "slow"))
    # A wider network in the report only (P = 1258).
    register(hessian_case(_spec("tanh", "softmax_cross_entropy", 3, 64, 0.1,
                                widths=[16, 24, 24, 10], suffix="-wide"), "report"))
    for label, widths in BENCH_WIDTHS.items():
        register(hessian_case(_spec("tanh", "mse", 3, 64, 0.0, widths=widths,
                                    suffix=f"-P{label}", dtypes=("float64",)), "bench"))


# Benchmark shapes: a tanh MLP with two hidden layers, batch 64, P ≈ 1k, 3k, 10k.
BENCH_WIDTHS = {"1k": [16, 20, 20, 10], "3k": [30, 38, 38, 10], "10k": [64, 70, 70, 10]}

_register_all()
