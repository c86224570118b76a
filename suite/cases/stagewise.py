"""Second-order stagewise backprop cases (Mizutani & Dreyfus 2006, 2008).

The derivations of manual.stagewise and manual.spectrum, each against its own oracle:

    hessian       vs jax.hessian of manual.mlp.loss over ravel_pytree(params)
                  (with the float64 finite-difference witness on vᵀ H v)
    diagonal      hessian_diagonal vs the diagonal of jax.hessian (with the witness
                  e_iᵀ H e_i: a second difference along one coordinate)
    blocks        hessian_blocks vs the layer-diagonal slices of jax.hessian
    rows          hessian_rows vs a row slice of jax.hessian
    gn_diagonal   gauss_newton_diagonal vs the diagonal of Jᵀ Λ J + λ I_weights
    hvp           vs jax.jvp of jax.grad of manual.mlp.loss (reference.autodiff.hvp)
    gauss_newton  vs Jᵀ Λ J + λ I_weights, J = jax.jacrev of the logits, Λ the
                  per-sample loss Hessians / N from jax.hessian of a loss written here,
                  independently of manual.losses
    spectrum      manual.spectrum.lanczos's top eigenvalues of the hand-derived hvp and
                  the trace as the sum of hessian_diagonal, vs numpy-style eigh and the
                  trace of jax.hessian

The activation is a name, the user's SiLU (suite.cases.mlp.SILU) or one per hidden
layer; the loss a name or a user's Loss (binary logistic, Huber). The test tier is a
covering design over (depth 1..5, activation, loss, l2, N); the slow tier (run by the
report) sweeps every (activation, depth) pair with the other factors rotated; the report
tier holds a wider net and Lanczos at P ≈ 3k; the bench tier is the tanh MLP at
P ≈ 1k, 3k, 10k against jax.hessian (diagonal, blocks, hvp at P ≈ 10k).
"""

import collections

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from manual import mlp, spectrum, stagewise
from manual.losses import Loss
from reference import autodiff
from suite.cases import Case, Family, register, register_family
from suite.cases.common import normal, split
from suite.cases.mlp import BINARY_LOGISTIC, HUBER, SILU, activation_label, net_inputs

__all__ = ["ACTIVATIONS", "LOSSES", "BENCH_WIDTHS", "widths_for", "weight_mask",
           "gauss_newton_reference", "hessian_case", "diagonal_case", "blocks_case",
           "rows_case", "gn_diagonal_case", "hvp_case", "gauss_newton_case", "spectrum_case"]

register_family(Family(
    name="stagewise",
    title="Second-order stagewise backprop: exact MLP Hessian, its diagonal, blocks, rows, "
          "spectrum and trace, Gauss-Newton, Hessian-vector",
    description="Stagewise second-order backprop (Mizutani & Dreyfus, IJCNN 2006; Neural "
                "Networks 2008): second-order costates Ω_l = D W Ω Wᵀ D + diag(f'' ⊙ δ Wᵀ) and "
                "mixed costates ∂²E/∂z_l∂θ_m propagated back stage by stage; every Hessian block "
                "(l <= m) one batched product over the samples, mirrored. Against jax.hessian "
                "(with the finite-difference witness on vᵀHv), hvp (Pearlmutter's R-operator) "
                "against jax.jvp of jax.grad, Gauss-Newton against Jᵀ Λ J from jax.jacrev. "
                "The diagonal (â² against diag Ω_l, no block formed, with the witness "
                "e_iᵀHe_i), the layer blocks and row slabs against slices of jax.hessian; "
                "Lanczos on the hand-derived hvp against eigh of jax.hessian; user "
                "activations and losses and one activation per hidden layer throughout.",
))

ACTIVATIONS = ("tanh", "sigmoid", "softplus", "gelu", "relu", SILU)
LOSSES = ("mse", "softmax_cross_entropy", BINARY_LOGISTIC, HUBER)
_SHORT = {"mse": "mse", "softmax_cross_entropy": "ce", "binary_logistic": "logistic",
          "huber": "huber"}
# Hidden widths by depth (all different, so a transposed block cannot pass by accident).
_HIDDEN = (5, 6, 4, 7)


def widths_for(depth, n_in=4, n_out=3):
    return [n_in] + list(_HIDDEN[:depth - 1]) + [n_out]


def _kwargs(spec):
    return dict(activation=spec["activation"], loss=spec["loss"], l2=spec["l2"])


def _builder(widths, n, activation, loss, with_v=False):
    def build(key, dtype):
        k = split(key, ["net", "v"])
        inputs = net_inputs(k["net"], widths, n, dtype, loss=loss, activation=activation)
        if with_v:  # a direction for the Hessian-vector product, params-shaped
            flat, unravel = ravel_pytree(inputs["params"])
            inputs["v"] = unravel(normal(k["v"], flat.shape, dtype))
        return inputs
    return build


def weight_mask(params):
    """1 at the weight coordinates of ravel_pytree(params), 0 at the biases."""
    return ravel_pytree(tuple((jnp.ones_like(w), jnp.zeros_like(b)) for w, b in params))[0]


def _sample_loss(loss):
    """One sample's loss in its logits, written independently of manual.losses (a user's
    Loss: its own forward code, the batch mean of one sample)."""
    if isinstance(loss, Loss):
        return lambda z, y: loss.value(z[None, :], y[None, :])
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


def _loss_label(loss):
    return _SHORT[loss if isinstance(loss, str) else loss.name]


def _label(kind, spec):
    act = activation_label(spec["activation"]).replace(",", "+")
    return (f"stagewise/{kind}/{act}-{_loss_label(spec['loss'])}-d{spec['depth']}"
            f"-N{spec['n']}-l2{spec['l2']:g}" + spec.get("suffix", ""))


def _widths(spec):
    return spec.get("widths") or widths_for(spec["depth"])


def _sizes(spec, **extra):
    widths = _widths(spec)
    return dict(widths="-".join(map(str, widths)), N=spec["n"],
                P=sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True)),
                **extra)


def _jax_hessian(kw):
    return lambda i: autodiff.hessian(mlp.loss, i["params"], i["x"], i["y"], **kw)


def hessian_case(spec, tier):
    kw = _kwargs(spec)
    return Case(
        name=_label("hessian", spec), family="stagewise",
        build=_builder(_widths(spec), spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **kw),
        reference=_jax_hessian(kw),
        objective=lambda i: mlp.loss(i["params"], i["x"], i["y"], **kw),
        wrt=("params",), order=2, tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")),
        sizes=_sizes(spec))


def _params_shaped(flat, params):
    return ravel_pytree(params)[1](flat)


def diagonal_case(spec, tier):
    """hessian_diagonal vs diag(jax.hessian), FD witness e_iᵀ H e_i on one coordinate."""
    kw = _kwargs(spec)
    return Case(
        name=_label("diagonal", spec), family="stagewise",
        build=_builder(_widths(spec), spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.hessian_diagonal(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: _params_shaped(jnp.diag(_jax_hessian(kw)(i)), i["params"]),
        objective=lambda i: mlp.loss(i["params"], i["x"], i["y"], **kw),
        wrt=("params",), order=2, hessian_form="diagonal", tier=tier,
        dtypes=spec.get("dtypes", ("float32", "float64")), sizes=_sizes(spec))


def _layer_slices(h, params):
    offsets, sizes = stagewise.layout(params)
    return tuple(h[o:o + s, o:o + s] for o, s in zip(offsets, sizes, strict=True))


def blocks_case(spec, tier):
    """hessian_blocks vs the layer-diagonal blocks of jax.hessian."""
    kw = _kwargs(spec)
    return Case(
        name=_label("blocks", spec), family="stagewise",
        build=_builder(_widths(spec), spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.hessian_blocks(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: _layer_slices(_jax_hessian(kw)(i), i["params"]),
        tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")), sizes=_sizes(spec))


def rows_case(spec, tier):
    """hessian_rows(start, stop) vs rows start:stop of jax.hessian; ``spec["rows"]`` is
    (start, stop) as fractions of P (ends off the layers' row groups on purpose)."""
    kw = _kwargs(spec)
    widths = _widths(spec)
    total = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    start, stop = (int(round(f * total)) for f in spec["rows"])
    return Case(
        name=_label("rows", spec) + f"-r{start}:{stop}", family="stagewise",
        build=_builder(widths, spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.hessian_rows(i["params"], i["x"], i["y"], start, stop,
                                                **kw),
        reference=lambda i: _jax_hessian(kw)(i)[start:stop],
        tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")),
        sizes=_sizes(spec, rows=f"{start}:{stop}"))


def gn_diagonal_case(spec, tier):
    """gauss_newton_diagonal vs the diagonal of Jᵀ Λ J + λ I_weights."""
    kw = _kwargs(spec)
    return Case(
        name=_label("gn_diagonal", spec), family="stagewise",
        build=_builder(_widths(spec), spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.gauss_newton_diagonal(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: _params_shaped(
            jnp.diag(gauss_newton_reference(i["params"], i["x"], i["y"], **kw)), i["params"]),
        tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")), sizes=_sizes(spec))


Spectrum = collections.namedtuple("Spectrum", "top_eigenvalues trace")


def spectrum_case(spec, tier, *, k):
    """Lanczos (manual.spectrum, full reorthogonalisation) on the hand-derived hvp, and the
    exact trace as the sum of hessian_diagonal, vs eigh and the trace of jax.hessian."""
    kw = _kwargs(spec)
    widths = _widths(spec)
    total = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))

    def manual(i):
        matvec = stagewise.hessian_matvec(i["params"], i["x"], i["y"], **kw)
        top, _ = spectrum.lanczos(matvec, total, k, key=jax.random.PRNGKey(0),
                                  dtype=i["x"].dtype)
        diagonal = stagewise.hessian_diagonal(i["params"], i["x"], i["y"], **kw)
        return Spectrum(top, sum(t.sum() for t in jax.tree_util.tree_leaves(diagonal)))

    def reference(i):
        h = _jax_hessian(kw)(i)
        return Spectrum(jnp.linalg.eigh(h)[0][::-1][:k], jnp.trace(h))

    return Case(name=_label("spectrum", spec) + f"-top{k}", family="stagewise",
                build=_builder(widths, spec["n"], spec["activation"], spec["loss"]),
                manual=manual, reference=reference, tier=tier,
                dtypes=spec.get("dtypes", ("float32", "float64")),
                sizes=_sizes(spec, k=k, iters=spectrum.default_iters(total, k)))


def hvp_case(spec, tier):
    kw = _kwargs(spec)
    widths = _widths(spec)

    def reference(i):
        return autodiff.hvp(lambda p: mlp.loss(p, i["x"], i["y"], **kw), i["params"], i["v"])

    return Case(
        name=_label("hvp", spec), family="stagewise",
        build=_builder(widths, spec["n"], spec["activation"], spec["loss"], with_v=True),
        manual=lambda i: stagewise.hvp(i["params"], i["x"], i["y"], i["v"], **kw),
        reference=reference, tier=tier, dtypes=spec.get("dtypes", ("float32", "float64")),
        sizes=_sizes(spec))


def gauss_newton_case(spec, tier):
    kw = _kwargs(spec)
    return Case(
        name=_label("gauss_newton", spec), family="stagewise",
        build=_builder(_widths(spec), spec["n"], spec["activation"], spec["loss"]),
        manual=lambda i: stagewise.gauss_newton(i["params"], i["x"], i["y"], **kw),
        reference=lambda i: gauss_newton_reference(i["params"], i["x"], i["y"], **kw),
        tier=tier, sizes=_sizes(spec))


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
# The curvature toolkit in `make test` (float64 only: `make test` has a time budget, and
# the slow tier runs every kind in both dtypes): every kind once, the user's activation
# and loss, one activation per hidden layer with a kinked one among them, l2 on and off.
PER_LAYER = ("tanh", SILU, "relu", "softplus")  # up to depth 5; a net takes its first L - 1
F64 = ("float64",)
TEST_TOOLKIT = (
    (diagonal_case, _spec(PER_LAYER[:3], BINARY_LOGISTIC, 4, 7, 0.1, widths=[4, 5, 6, 4, 1],
                          dtypes=F64)),
    (blocks_case, _spec(PER_LAYER[:1] + PER_LAYER[2:3], "softmax_cross_entropy", 3, 16, 0.1,
                        dtypes=F64)),
    (gn_diagonal_case, _spec(SILU, BINARY_LOGISTIC, 2, 16, 0.0, widths=[4, 5, 2], dtypes=F64)),
    (rows_case, _spec("softplus", HUBER, 3, 7, 0.0, rows=(0.3, 0.8), dtypes=F64)),
)
# and in the slow tier, beyond the sweep below
SLOW_TOOLKIT = (
    (diagonal_case, _spec("tanh", "softmax_cross_entropy", 3, 7, 0.1)),
    (diagonal_case, _spec(SILU, HUBER, 4, 16, 0.0)),
    (diagonal_case, _spec(PER_LAYER, BINARY_LOGISTIC, 5, 7, 0.1, widths=[4, 5, 6, 4, 7, 1])),
    (blocks_case, _spec("gelu", "mse", 3, 7, 0.0)),
    (gn_diagonal_case, _spec("sigmoid", "softmax_cross_entropy", 4, 7, 0.1)),
    (hessian_case, _spec(PER_LAYER[:3], HUBER, 4, 7, 0.1)),
    (hvp_case, _spec(PER_LAYER[:3], HUBER, 4, 7, 0.1)),
    (hvp_case, _spec(SILU, BINARY_LOGISTIC, 3, 16, 0.0)),
)


def _slow_specs():
    """Every (activation, depth) pair; loss, N and l2 rotate so each pair differs."""
    out = []
    for i, act in enumerate(ACTIVATIONS[:5]):
        for depth in range(1, 6):
            out.append(_spec(act, LOSSES[(i + depth) % 2], depth, (1, 7, 64)[(i + 2 * depth) % 3],
                             (0.0, 0.1)[(i + depth // 2) % 2]))
    return out


def _slow_toolkit():
    """The diagonal for every (activation, depth) pair, every loss in turn; the blocks and
    Gauss-Newton diagonal once per activation (depth 3 and 4); per-layer activations."""
    out = []
    for i, act in enumerate(ACTIVATIONS):
        for depth in range(1, 6):
            spec = _spec(act, LOSSES[(i + depth) % len(LOSSES)], depth,
                         (1, 7, 64)[(i + 2 * depth) % 3], (0.0, 0.1)[(i + depth // 2) % 2])
            out.append((diagonal_case, spec))
            if depth == 3:
                out.append((blocks_case, dict(spec, loss=LOSSES[(i + 1) % len(LOSSES)])))
            if depth == 4:
                out.append((gn_diagonal_case, dict(spec, loss=LOSSES[(i + 2) % len(LOSSES)])))
    for depth in (2, 3, 4, 5):
        acts = PER_LAYER[4 - depth + 1:] if depth < 5 else PER_LAYER
        for make in (hessian_case, diagonal_case, blocks_case):
            out.append((make, _spec(tuple(acts[:depth - 1]), LOSSES[depth % len(LOSSES)],
                                    depth, 7, (0.0, 0.1)[depth % 2])))
    for rows in ((0.0, 1.0), (0.0, 0.05), (0.55, 1.0)):
        out.append((rows_case, _spec("tanh", "softmax_cross_entropy", 4, 7, 0.1, rows=rows)))
    out.append((spectrum_case, _spec("tanh", HUBER, 3, 16, 0.0)))
    return out


def _register_all():
    for spec in TEST_HESSIANS:
        register(hessian_case(spec, "test"))
    for spec in TEST_HVPS:
        register(hvp_case(spec, "test"))
    for spec in TEST_GAUSS_NEWTONS:
        register(gauss_newton_case(spec, "test"))
    names = set()
    for make, spec in TEST_TOOLKIT:
        names.add(register(make(spec, "test")).name)
    names.add(register(spectrum_case(_spec("tanh", "softmax_cross_entropy", 3, 7, 0.1,
                                           dtypes=F64), "test", k=5)).name)
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
    for make, spec in SLOW_TOOLKIT + tuple(_slow_toolkit()):
        case = make(spec, "slow") if make is not spectrum_case else make(spec, "slow", k=4)
        if case.name not in names:
            names.add(register(case).name)
    # A wider network in the report only (P = 1258), and Lanczos' top 10 at P = 3050.
    register(hessian_case(_spec("tanh", "softmax_cross_entropy", 3, 64, 0.1,
                                widths=[16, 24, 24, 10], suffix="-wide"), "report"))
    register(spectrum_case(_spec("tanh", "softmax_cross_entropy", 3, 64, 0.0,
                                 widths=BENCH_WIDTHS["3k"], suffix="-P3k",
                                 dtypes=("float64",)), "report", k=10))
    bench = dict(dtypes=("float64",))
    for label, widths in BENCH_WIDTHS.items():
        register(hessian_case(_spec("tanh", "mse", 3, 64, 0.0, widths=widths,
                                    suffix=f"-P{label}", **bench), "bench"))
    big = _spec("tanh", "mse", 3, 64, 0.0, widths=BENCH_WIDTHS["10k"], suffix="-P10k", **bench)
    for make in (diagonal_case, blocks_case, hvp_case):
        register(make(big, "bench"))


# Benchmark shapes: a tanh MLP with two hidden layers, batch 64, P ≈ 1k, 3k, 10k.
BENCH_WIDTHS = {"1k": [16, 20, 20, 10], "3k": [30, 38, 38, 10], "10k": [64, 70, 70, 10]}

_register_all()
