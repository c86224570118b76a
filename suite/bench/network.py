"""Exact curvature of layer stacks (manual.network) against autodiff: the network bench rows.

The issue's three shapes (float64, softmax cross-entropy, 10 classes)::

    cnn          x (32, 3, 8, 8): Conv2d 3->8 3x3 p1, relu, MaxPool2d 2, Conv2d 8->16 3x3 p1,
                 tanh, AvgPool2d 2, Flatten, Linear 64->10                     P = 2,042
    resnet       x (32, 3, 8, 8): Conv2d 3->16 3x3 p1, relu, Residual(Conv2d 16->16 3x3
                 p1, relu, Conv2d 16->16 3x3 p1), relu, GlobalAvgPool, Linear 16->10
                                                                               P = 5,258
    transformer  x (8, 8, 32): Residual(LayerNorm, SelfAttention(4, causal)), Residual(
                 LayerNorm, Linear 32->128, gelu, Linear 128->32), LayerNorm,
                 MeanOverTime, Linear 32->10                                   P = 12,970

Each manual.network function is timed against its autodiff baseline, both of the same
forward (manual.network.loss; the registry judges them against an independent one):

    hessian_diagonal   against jax.hessian, and against one hand-derived gradient
    hvp                against jax.jvp of jax.grad
    per_sample_grads   against jax.vmap of jax.grad (each sample's own loss)
    hessian            against jax.hessian
    grad               against jax.grad

Every pair is compiled, checked once against the baseline (compare.compare, float64; a
fast wrong answer is not a result), then timed in interleaved rounds (medians): the
expensive programs (both Hessians, the diagonal) in one set of rounds, the cheap ones
(hvp, the gradients, the diagonal again) in another, filling ``budget_s``. Each row
carries the issue's target for its ratio and whether it is met. Nothing else runs in
the process meanwhile.
"""

import sys

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from manual import network
from reference import autodiff
from suite import compare as cmp
from suite.config import configure
from suite.timing import block, compile_timed, time_interleaved

__all__ = ["SHAPES", "TARGETS", "nets", "inputs", "programs", "measure", "extra"]

LOSS = "softmax_cross_entropy"
CLASSES = 10


def nets() -> dict:
    """label -> (net, x shape, sizes for manual.network.init)."""
    conv = network.Conv2d(padding=1)
    return {
        "cnn": ((conv, network.Act("relu"), network.MaxPool2d(2), network.Conv2d(padding=1),
                 network.Act("tanh"), network.AvgPool2d(2), network.Flatten(),
                 network.Linear()),
                (32, 3, 8, 8), ((8, 3), None, None, (16, 3), None, None, None, CLASSES)),
        "resnet": ((conv, network.Act("relu"),
                    network.Residual(network.Conv2d(padding=1), network.Act("relu"),
                                     network.Conv2d(padding=1)),
                    network.Act("relu"), network.GlobalAvgPool(), network.Linear()),
                   (32, 3, 8, 8), ((16, 3), None, ((16, 3), None, (16, 3)), None, None,
                                   CLASSES)),
        "transformer": ((network.Residual(network.LayerNorm(),
                                          network.SelfAttention(4, causal=True)),
                         network.Residual(network.LayerNorm(), network.Linear(),
                                          network.Act("gelu"), network.Linear()),
                         network.LayerNorm(), network.MeanOverTime(), network.Linear()),
                        (8, 8, 32), ((None, None), (None, 128, None, 32), None, None,
                                     CLASSES)),
    }


SHAPES = {"cnn": 2042, "resnet": 5258, "transformer": 12970}  # label -> P (the issue's)

# (function, baseline) -> (label -> bound, "speed-up" (baseline / manual >= bound) or
# "ratio" (manual / baseline <= bound)); from the "Done when"
TARGETS = {
    ("hessian_diagonal", "jax.hessian"): ({"cnn": 100, "resnet": 100, "transformer": 30},
                                          "speed-up"),
    ("hessian_diagonal", "grad"): ({"cnn": 20}, "ratio"),
    ("hvp", "jvp_grad"): ({"cnn": 1.1, "resnet": 1.1, "transformer": 1.1}, "ratio"),
    ("per_sample_grads", "vmap_grad"): ({"cnn": 1.5, "resnet": 1.5, "transformer": 1.5},
                                        "ratio"),
    ("hessian", "jax.hessian"): ({"resnet": 3}, "speed-up"),
}
PAIRS = (("hessian_diagonal", "jax.hessian"), ("hessian_diagonal", "grad"),
         ("hvp", "jvp_grad"), ("per_sample_grads", "vmap_grad"), ("hessian", "jax.hessian"),
         ("grad", "jax.grad"))
BIG = ("hessian_diagonal", "hessian", "jax.hessian")
# manual.network.hessian (P hvps) is timed where the issue sets it a target, and on the CNN;
# on the transformer (P = 12,970) it would take most of the bench's time for no target
FULL_HESSIAN = ("cnn", "resnet")
SMALL = ("hessian_diagonal", "hvp", "jvp_grad", "per_sample_grads", "vmap_grad", "grad",
         "jax.grad")


def inputs(label: str, *, device=None) -> dict:
    """params (manual.network.init, float64), x ~ N(0, 1), labels, a direction v."""
    net, shape, sizes = nets()[label]
    key_p, key_x, key_y, key_v = jax.random.split(jax.random.PRNGKey(0), 4)
    params = network.init(net, key_p, shape, sizes, dtype=jnp.float64)
    flat, unravel = ravel_pytree(params)
    data = dict(params=params, x=jax.random.normal(key_x, shape, jnp.float64),
                y=jax.random.randint(key_y, (shape[0],), 0, CLASSES),
                v=unravel(jax.random.normal(key_v, flat.shape, jnp.float64)))
    return jax.device_put(data, device)


def programs(net) -> dict:
    """name -> inputs -> output, every program timed here."""
    def loss(p, x, y):
        return network.loss(net, p, x, y, loss=LOSS)

    def sample_loss(p, x, y):  # sample n's own loss: the batch mean of one sample
        return loss(p, x[None], y[None])

    def hessian_diagonal(i):
        return ravel_pytree(network.hessian_diagonal(net, i["params"], i["x"], i["y"],
                                                     loss=LOSS))[0]

    return {
        "hessian_diagonal": hessian_diagonal,
        "jax.hessian": lambda i: autodiff.hessian(loss, i["params"], i["x"], i["y"]),
        "hessian": lambda i: network.hessian(net, i["params"], i["x"], i["y"], loss=LOSS),
        "hvp": lambda i: network.hvp(net, i["params"], i["x"], i["y"], i["v"], loss=LOSS),
        "jvp_grad": lambda i: autodiff.hvp(loss, i["params"], i["v"], i["x"], i["y"]),
        "per_sample_grads": lambda i: network.per_sample_grads(net, i["params"], i["x"],
                                                               i["y"], loss=LOSS),
        "vmap_grad": lambda i: jax.vmap(autodiff.grad(sample_loss), (None, 0, 0))(
            i["params"], i["x"], i["y"]),
        "grad": lambda i: network.grad(net, i["params"], i["x"], i["y"], loss=LOSS),
        "jax.grad": lambda i: autodiff.grad(loss)(i["params"], i["x"], i["y"]),
    }


def _checks(outputs):
    """normwise error of each manual output against its baseline (the Hessian's diagonal
    for hessian_diagonal)."""
    want = dict(hessian_diagonal=jnp.diagonal(outputs["jax.hessian"]),
                hessian=outputs["jax.hessian"], hvp=outputs["jvp_grad"],
                per_sample_grads=outputs["vmap_grad"], grad=outputs["jax.grad"])
    return {name: cmp.compare(outputs[name], ref, "float64") for name, ref in want.items()
            if name in outputs}


def measure(label: str, *, device=None, budget_s: float = 5.0, big_repeats: int = 3,
            echo=print) -> list:
    """The rows of one shape: each (function, baseline) pair with both medians (s), the
    ratio manual / baseline, the issue's target and whether it is met. The expensive set
    runs ``big_repeats`` rounds (each of its programs runs once more to be checked and
    once to warm up)."""
    net = nets()[label][0]
    data = inputs(label, device=device)
    p_count = int(ravel_pytree(data["params"])[0].size)
    fns = programs(net)
    big_names = tuple(k for k in BIG if k != "hessian" or label in FULL_HESSIAN)
    pairs = tuple(pair for pair in PAIRS if pair[0] in fns and (
        pair[0] != "hessian" or label in FULL_HESSIAN))
    if label not in FULL_HESSIAN:
        del fns["hessian"]
    compiled, compile_s = {}, {}
    for name, fn in fns.items():
        compiled[name], compile_s[name] = compile_timed(fn, data)
    checks = _checks({name: block(compiled[name](data)) for name in compiled})
    echo(f"  ({label}, P = {p_count}: compiled and checked: " + ", ".join(
        f"{name} {'PASS' if c.passed else 'FAIL'} {c.worst.normwise:.1e}"
        for name, c in checks.items()) + ")")
    big, _ = time_interleaved([compiled[k] for k in big_names], data, repeats=big_repeats)
    small, samples = time_interleaved([compiled[k] for k in SMALL], data, budget_s=budget_s,
                                      min_repeats=20, max_repeats=2000)
    times = dict(zip(SMALL, small, strict=True))
    times.update((k, t) for k, t in zip(big_names, big, strict=True)
                 if k != "hessian_diagonal")
    rows = []
    for fn, base in pairs:
        # the diagonal against jax.hessian from the rounds they shared
        t_fn = big[0] if (fn, base) == ("hessian_diagonal", "jax.hessian") else times[fn]
        bounds, kind = TARGETS.get((fn, base), ({}, None))
        bound = bounds.get(label)
        ratio = t_fn / times[base]
        met = None if bound is None else (
            1 / ratio >= bound if kind == "speed-up" else ratio <= bound)
        check = checks[fn] if fn in checks else None
        rows.append(dict(shape=label, P=p_count, function=fn, baseline=base,
                         manual_s=t_fn, baseline_s=times[base], ratio=ratio,
                         speed_up=1 / ratio, target=None if bound is None else
                         (f">= {bound}x faster" if kind == "speed-up" else f"<= {bound}x"),
                         met=met, check=None if check is None else
                         ("PASS" if check.passed else "FAIL"),
                         normwise=None if check is None else check.worst.normwise,
                         compile_manual_s=compile_s[fn], rounds=len(samples[0])))
    return rows


def _line(r):
    target = "" if r["target"] is None else f"{r['target']:<16} {'met' if r['met'] else 'MISSED'}"
    check = "" if r["check"] is None else f"{r['check']} {r['normwise']:.1e}"
    return (f"  {r['shape']:<12} {r['P']:>6} {r['function']:<17} {1e3 * r['manual_s']:>10.3f} "
            f"{r['baseline']:<12} {1e3 * r['baseline_s']:>10.3f} {r['ratio']:>8.4f} "
            f"{r['speed_up']:>8.1f}x  {check:<14} {target}")


def extra(*, device, echo=print, labels=tuple(SHAPES), budget_s: float = 5.0,
          big_repeats: int = 3) -> list:
    """Print the rows of every shape; return them (seconds)."""
    echo("manual.network against autodiff of the same forward (float64, softmax CE, "
         "10 classes; medians of interleaved rounds, ms):")
    echo(f"  {'shape':<12} {'P':>6} {'function':<17} {'manual':>10} {'baseline':<12} "
         f"{'baseline':>10} {'ratio':>8} {'speed-up':>9}  {'check':<14} target")
    rows = []
    for label in labels:
        for r in measure(label, device=device, budget_s=budget_s, big_repeats=big_repeats,
                         echo=echo):
            echo(_line(r))
            rows.append(r)
    missed = [r for r in rows if r["met"] is False]
    echo(f"  targets: {sum(1 for r in rows if r['met'])} met, {len(missed)} missed"
         + "".join(f"; {r['shape']} {r['function']} vs {r['baseline']} "
                   f"{r['ratio']:.3g} ({r['target']})" for r in missed))
    return rows


if __name__ == "__main__":  # python -m suite.bench.network [labels]: these rows alone
    configure()
    extra(device=jax.devices()[0], labels=tuple(sys.argv[1:]) or tuple(SHAPES))
