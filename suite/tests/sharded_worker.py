"""The sharded checks, run in a process of their own with several devices.

``python -m suite.tests.sharded_worker OUT.json`` computes every comparison of
suite/tests/test_sharded.py in one JAX process — one start-up, one compile per program —
and writes the measurements as JSON; the tests in the main process only read them. Run
it where JAX sees at least four devices: test_sharded.py starts it with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` on the CPU (``--platform gpu``
uses the GPUs instead). Importing this module computes nothing.

Every comparison is float64 under suite.compare's tolerance (normwise 1e-12), against
two oracles: manual/ on one device over the global batch, and JAX autodiff (jax.grad,
jax.vjp, jax.hessian) of the forward on the global batch.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from manual import conv, mlp, network, rnn, stagewise
from reference import autodiff
from suite import compare as cmp
from suite import sharded
from suite.cases import get as get_case
from suite.cases.common import mlp_inputs, normal, split
from suite.cases.rnn import builder as rnn_builder
from suite.cases.rnn import reference_forward
from suite.config import configure
from suite.run import run_case
from suite.tests.planting import nudge_one_element, plant

DEVICES = 4


def meshes(count=DEVICES):
    """(label, axis sizes, axis type) for ``count`` devices; every mesh has "data" (size 1
    when only rows are split). For four: data4, data2-model2, model4, and data2-model2 with
    Auto axes (the others are Explicit, jax.make_mesh's default)."""
    out = [(f"data{count}", {"data": count}, AxisType.Explicit)]
    if count >= 4 and count % 2 == 0:
        grid = {"data": 2, "model": count // 2}
        out += [(f"data2-model{count // 2}", grid, AxisType.Explicit),
                (f"model{count}", {"data": 1, "model": count}, AxisType.Explicit),
                (f"data2-model{count // 2}-auto", grid, AxisType.Auto)]
    else:
        out += [(f"model{count}", {"data": 1, "model": count}, AxisType.Explicit)]
    return out


MESHES = meshes()
FUNCTIONS = ("mlp_grad", "conv2d_backward", "rnn_backward", "hessian")
# Which functions run on the Auto mesh (one of each kind of output is enough there).
AUTO_FUNCTIONS = ("mlp_grad", "hessian")
# manual.network's data-parallel functions, on the meshes that split the batch
NETWORK_FUNCTIONS = ("network_grad", "network_hessian_diagonal", "network_per_sample_grads")
NETWORK_MESHES = ("data4", "data2-model2")


def functions(label, axis_type):
    """The functions compared on the mesh ``label``."""
    if axis_type == AxisType.Auto:
        return AUTO_FUNCTIONS
    return FUNCTIONS + (NETWORK_FUNCTIONS if label in NETWORK_MESHES else ())


PLANTED = ("mlp_grad: missing psum", "mlp_grad: shard gradient not rescaled",
           "mlp_grad: l2 added per shard", "hessian: every device computes rows 0..R",
           "hessian: missing psum over data", "hessian: l2 added unscaled per shard",
           "conv2d_backward: dw not summed over shards",
           "network_grad: missing psum", "network_hessian_diagonal: shard not rescaled",
           "network_per_sample_grads: scaled by n_s / N",
           "rnn_backward: dparams not summed over shards",
           "registry: one-element slip in the sharded Hessian")
# bad call -> the argument its ValueError must name first
BAD_INPUTS = {"mesh is not a Mesh": "mesh", "mesh without a data axis": "mesh",
              "mlp_grad: batch 6 on data=4": "x", "conv2d_backward: batch 6 on data=4": "x",
              "rnn_backward: batch 6 on data=4": "xs", "hessian: batch 6 on data=4": "x",
              "hessian: P=66 on model=4": "mesh", "hessian: mesh without a data axis": "mesh",
              "network_grad: batch 6 on data=4": "x",
              "network_hessian_diagonal: mesh without a data axis": "mesh"}
# Through run_case as the report runs them; the conv case is one whose reference XLA would
# get wrong if it were compiled into the sharded program (see suite/run.py).
REGISTRY_CASES = ("sharded/hessian/data2-model2-softplus-mse-l20",
                  "sharded/conv2d_backward/data2-model2-dilation2-groups2")

MLP = dict(widths=[5, 6, 4], n=8, activation="tanh", loss="softmax_cross_entropy", l2=0.1)
HESSIAN = dict(widths=[3, 4, 4, 4], n=8, activation="softplus", loss="mse", l2=0.1)  # P = 56
CONV = dict(stride=2, padding=1, groups=2)
# A CNN whose diagonal takes every cheaper path (f'' as a diagonal, shared columns,
# channel blocks): x (8, 2, 4, 4), P = 183
NET = (network.Conv2d(padding=1), network.Act("tanh"), network.MaxPool2d(2),
       network.Conv2d(padding=1), network.Act("tanh"), network.Flatten(), network.Linear())
NET_LOSS = "softmax_cross_entropy"


def _network_inputs(n=8):
    k = split(jax.random.PRNGKey(3), ["p", "x", "y"])
    params = network.init(NET, k["p"], (n, 2, 4, 4), ((3, 3), None, None, (6, 3), None,
                                                       None, 3), dtype=jnp.float64)
    return (params, normal(k["x"], (n, 2, 4, 4), "float64"),
            jax.random.randint(k["y"], (n,), 0, 3))


def _network_oracles():
    """name -> (manual.network on one device, autodiff on one device)."""
    def loss(p, x, y):
        return network.loss(NET, p, x, y, loss=NET_LOSS)

    def diagonal(p, x, y):
        flat, unravel = ravel_pytree(p)
        return unravel(jnp.diagonal(jax.hessian(lambda f: loss(unravel(f), x, y))(flat)))

    def per_sample(p, x, y):
        return jax.vmap(lambda xi, yi: jax.grad(loss)(p, xi[None], yi[None]),
                        out_axes=0)(x, y)
    kw = dict(loss=NET_LOSS)
    return {"network_grad": (lambda *a: network.grad(NET, *a, **kw), jax.grad(loss)),
            "network_hessian_diagonal": (lambda *a: network.hessian_diagonal(NET, *a, **kw),
                                         diagonal),
            "network_per_sample_grads": (lambda *a: network.per_sample_grads(NET, *a, **kw),
                                         per_sample)}


def make_mesh(shape, axis_type, platform=None):
    devices = jax.devices(platform)[:math.prod(shape.values())]
    return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=(axis_type,) * len(shape),
                         devices=devices)


def _kw(spec):
    return dict(activation=spec["activation"], loss=spec["loss"], l2=spec["l2"])


def _net(spec, n=None, key=0):
    return mlp_inputs(jax.random.PRNGKey(key), spec["widths"], n or spec["n"], "float64",
                      loss=spec["loss"], activation=spec["activation"])


def _conv_inputs(n=8):
    k = split(jax.random.PRNGKey(1), ["x", "w", "b", "dy"])
    x, w, b = (normal(k["x"], (n, 4, 7, 7), "float64"), normal(k["w"], (6, 2, 3, 3), "float64"),
               normal(k["b"], (6,), "float64"))
    out = jax.eval_shape(functools.partial(conv.conv2d, **CONV), x, w, b).shape
    return x, w, b, normal(k["dy"], out, "float64")


def _rnn_inputs(n=8):
    i = rnn_builder(6, n, 3, 5)(jax.random.PRNGKey(2), "float64")
    return i["params"], i["xs"], i["h0"], i["dhs"]


def _judge(out, single, auto):
    """Both comparisons, float64 policy: passed and the worst normwise error of each."""
    a, b = cmp.compare(out, single, "float64"), cmp.compare(out, auto, "float64")
    return dict(single_passed=a.passed, single_normwise=a.worst.normwise, single_message=a.message,
                autodiff_passed=b.passed, autodiff_normwise=b.worst.normwise,
                autodiff_message=b.message)


def _programs(mesh):
    """function name -> (sharded, manual on one device, autodiff on one device, inputs).

    Each side is its own program: in one jit with the sharded code, XLA's partitioner
    would split the single-device sides over the mesh too (and on a 2-D mesh it gets a
    grouped convolution's weight gradient wrong, see test_sharded.py).
    """
    kw, hkw = _kw(MLP), _kw(HESSIAN)
    truncation = 3 if mesh.shape["data"] == 2 else None  # truncated BPTT on two meshes

    def rnn_autodiff(params, xs, h0, dhs):
        def forward(*p):
            return reference_forward(*p, truncation=truncation)
        return tuple(autodiff.vjp(forward, (params, xs, h0), dhs))

    m, h = _net(MLP), _net(HESSIAN)
    nets = {name: (lambda *a, name=name: getattr(sharded, name)(NET, *a, mesh=mesh,
                                                              loss=NET_LOSS),
                   single, auto, _network_inputs())
            for name, (single, auto) in _network_oracles().items()}
    return nets | {
        "mlp_grad": (lambda *a: sharded.mlp_grad(*a, mesh=mesh, **kw),
                     lambda *a: mlp.grad(*a, **kw),
                     lambda *a: jax.grad(mlp.loss)(*a, **kw),
                     (m["params"], m["x"], m["y"])),
        "conv2d_backward": (lambda *a: tuple(sharded.conv2d_backward(*a, mesh=mesh, **CONV)),
                            lambda *a: tuple(conv.conv2d_backward(*a, **CONV)),
                            lambda x, w, b, dy: tuple(autodiff.vjp(
                                functools.partial(conv.conv2d, **CONV), (x, w, b), dy)),
                            _conv_inputs()),
        "rnn_backward": (lambda *a: tuple(sharded.rnn_backward(*a, mesh=mesh,
                                                               truncation=truncation)),
                         lambda *a: tuple(rnn.backward(*a, truncation=truncation)),
                         rnn_autodiff, _rnn_inputs()),
        "hessian": (lambda *a: sharded.hessian(*a, mesh=mesh, **hkw),
                    lambda *a: stagewise.hessian(*a, **hkw),
                    lambda *a: autodiff.hessian(mlp.loss, *a, **hkw),
                    (h["params"], h["x"], h["y"])),
    }


def _layout(array):
    """How an array is laid out: its spec, and each shard's device, rows and shape."""
    spec = getattr(array.sharding, "spec", None)
    shards = [dict(device=s.device.id, shape=list(s.data.shape),
                   rows=[s.index[0].start or 0,
                         array.shape[0] if s.index[0].stop is None else s.index[0].stop])
              for s in array.addressable_shards]
    return dict(spec=[None if a is None else str(a) for a in spec] if spec is not None else None,
                shape=list(array.shape), shards=shards)


def comparisons(platform=None, count=DEVICES):
    one = jax.devices(platform)[0]
    oracles = {}  # (function, truncation) -> single-device results, computed once
    out = {}
    for label, shape, axis_type in meshes(count):
        mesh = make_mesh(shape, axis_type, platform)
        for name in functions(label, axis_type):
            sharded_fn, single_fn, autodiff_fn, args = _programs(mesh)[name]
            key = (name, mesh.shape["data"] == 2 and name == "rnn_backward")
            if key not in oracles:
                local = jax.device_put(args, one)
                oracles[key] = (jax.jit(single_fn)(*local), jax.jit(autodiff_fn)(*local))
            result = jax.jit(sharded_fn)(*args)
            entry = _judge(result, *oracles[key])
            if name == "hessian":
                entry["layout"] = _layout(result)
                entry["P"] = int(result.shape[0])
                entry["n_model"] = shape.get("model", 1)
            elif name == "conv2d_backward":
                entry["layout"] = _layout(result[0])  # dx stays split over data
            elif name == "network_per_sample_grads":
                entry["layout"] = _layout(result[0][0])  # each leaf split over data
            out[f"{label}/{name}"] = entry
    return out


# --- planted bugs: the mistakes a sharded backward is likely to contain --------------------

def _mlp_mutant(mesh, kind):
    kw = _kw(MLP)

    def body(params, x, y):
        share = 1.0 / mesh.shape["data"]  # n_s / N
        g = mlp.grad(params, x, y, activation=kw["activation"], loss=kw["loss"])
        if kind != "not rescaled":
            g = jax.tree_util.tree_map(lambda t: t * share, g)
        if kind == "l2 per shard":  # λ W on every shard, then summed S times
            g = tuple((dw + kw["l2"] * w, db) for (dw, db), (w, _) in zip(g, params, strict=True))
        return g if kind == "missing psum" else lax.psum(g, "data")

    def run(params, x, y):
        g = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                          out_specs=P(), check_vma=False)(params, x, y)
        if kind == "l2 per shard":  # the λ W of every shard went into the psum
            return g
        return tuple((dw + kw["l2"] * w, db) for (dw, db), (w, _) in zip(g, params, strict=True))
    return run



def _hessian_mutant(mesh, kind):
    kw = _kw(HESSIAN)
    widths = HESSIAN["widths"]
    total = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
    parts = mesh.shape["model"]
    rows = total // parts

    def body(params, x, y):
        # The slab from this shard's whole stagewise Hessian: the row method does not
        # matter to these mistakes, which are in how the slabs are placed and combined.
        j = lax.axis_index("model")
        share = 1.0 / mesh.shape["data"]
        full = stagewise.hessian(params, x, y, activation=kw["activation"], loss=kw["loss"])
        first = 0 if kind == "rows 0..R" else j * rows
        mine = lax.dynamic_slice(full, (jnp.int32(first), jnp.int32(0)), (rows, total))
        weights = [jnp.concatenate([jnp.ones(w.size), jnp.zeros(b.size)]) for w, b in params]
        on = lax.dynamic_slice(jnp.concatenate(weights), (j * rows,), (rows,))
        local = jnp.arange(rows)

        def penalised(slab):  # + λ on this device's weight rows
            return slab.at[local, j * rows + local].add(kw["l2"] * on)

        mine = mine * share
        if kind == "l2 per shard":  # λ on every shard, unscaled: S λ in the sum
            mine = penalised(mine)
        if kind != "missing psum":
            mine = lax.psum(mine, "data")
        return mine if kind == "l2 per shard" else penalised(mine)

    def run(params, x, y):
        return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                             out_specs=P("model"), check_vma=False)(params, x, y)
    return run


def _conv_mutant(mesh):
    def body(x, w, b, dy):
        return conv.conv2d_backward(x, w, b, dy, **CONV)  # dw, db left as one shard's part

    def run(x, w, b, dy):
        return jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P(), P(), P("data")),
                             out_specs=(P("data"), P(), P()), check_vma=False)(x, w, b, dy)
    return run


def _rnn_mutant(mesh):
    def body(params, xs, h0, dhs):
        return rnn.backward(params, xs, h0, dhs)  # dparams left as one shard's part

    def run(params, xs, h0, dhs):
        return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(None, "data"), P("data"),
                                                        P(None, "data")),
                             out_specs=(P(), P(None, "data"), P("data")), check_vma=False)(
            params, xs, h0, dhs)
    return run


def _network_mutant(mesh, kind):
    def body(params, x, y):
        share = 1.0 / mesh.shape["data"]
        if kind == "per-sample scaled":
            return jax.tree_util.tree_map(lambda t: t * share, network.per_sample_grads(
                NET, params, x, y, loss=NET_LOSS))
        if kind == "missing psum":
            return jax.tree_util.tree_map(lambda t: t * share, network.grad(
                NET, params, x, y, loss=NET_LOSS))
        return lax.psum(network.hessian_diagonal(NET, params, x, y, loss=NET_LOSS), "data")

    def run(params, x, y):
        out = P("data") if kind == "per-sample scaled" else P()
        return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                             out_specs=out, check_vma=False)(params, x, y)
    return run


def planted(platform=None):
    """Each mutant against manual/ on one device: every one of them must FAIL."""
    data4 = make_mesh({"data": 4}, AxisType.Auto, platform)
    grid = make_mesh({"data": 2, "model": 2}, AxisType.Auto, platform)
    m, h = _net(MLP), _net(HESSIAN)
    kw, hkw = _kw(MLP), _kw(HESSIAN)
    single_mlp = mlp.grad(m["params"], m["x"], m["y"], **kw)
    single_h = stagewise.hessian(h["params"], h["x"], h["y"], **hkw)
    conv_args, rnn_args = _conv_inputs(), _rnn_inputs()
    runs = {
        "mlp_grad: missing psum": (_mlp_mutant(data4, "missing psum"), m, single_mlp),
        "mlp_grad: shard gradient not rescaled": (_mlp_mutant(data4, "not rescaled"), m,
                                                  single_mlp),
        "mlp_grad: l2 added per shard": (_mlp_mutant(data4, "l2 per shard"), m, single_mlp),
        "hessian: every device computes rows 0..R": (_hessian_mutant(grid, "rows 0..R"), h,
                                                     single_h),
        "hessian: missing psum over data": (_hessian_mutant(grid, "missing psum"), h, single_h),
        "hessian: l2 added unscaled per shard": (_hessian_mutant(grid, "l2 per shard"), h,
                                                 single_h),
    }
    out = {}
    for name, (fn, net, single) in runs.items():
        result = jax.jit(fn)(net["params"], net["x"], net["y"])
        out[name] = dict(passed=cmp.compare(result, single, "float64").passed)
    net_args, oracles = _network_inputs(), _network_oracles()
    for name, function, kind in (
            ("network_grad: missing psum", "network_grad", "missing psum"),
            ("network_hessian_diagonal: shard not rescaled", "network_hessian_diagonal",
             "not rescaled"),
            ("network_per_sample_grads: scaled by n_s / N", "network_per_sample_grads",
             "per-sample scaled")):
        result = jax.jit(_network_mutant(data4, kind))(*net_args)
        single = jax.jit(oracles[function][0])(*net_args)
        out[name] = dict(passed=cmp.compare(result, single, "float64").passed)
    result = jax.jit(_conv_mutant(data4))(*conv_args)
    out["conv2d_backward: dw not summed over shards"] = dict(
        passed=cmp.compare(tuple(result), tuple(conv.conv2d_backward(*conv_args, **CONV)),
                           "float64").passed)
    result = jax.jit(_rnn_mutant(data4))(*rnn_args)
    out["rnn_backward: dparams not summed over shards"] = dict(
        passed=cmp.compare(tuple(result), tuple(rnn.backward(*rnn_args)), "float64").passed)
    return out


def registry_rows(device=None):
    """Registry cases through suite.run.run_case, as the report runs them, and one planted."""
    rows = {}
    for name in REGISTRY_CASES:
        row = run_case(get_case(name), "float64", device=device, timing=False)
        rows[name] = {"status": str(row.status), "message": row.message,
                      "normwise": row.normwise, "fd_error": row.fd_error}
    # the slip is planted in the single-device side: a sharded array cannot be ravelled
    # in place under explicit sharding, and which side is off does not matter to the verdict
    bad = run_case(plant(get_case(REGISTRY_CASES[0]), reference=nudge_one_element), "float64",
                   device=device, timing=False, fd=False)
    return rows, {"registry: one-element slip in the sharded Hessian": dict(
        passed=bad.status == "PASS", status=str(bad.status))}


def bad_inputs(platform=None):
    """The ValueError message of each bad call ("" if none was raised)."""
    data4 = make_mesh({"data": 4}, AxisType.Explicit, platform)
    model4 = make_mesh({"data": 1, "model": 4}, AxisType.Explicit, platform)
    no_data = make_mesh({"model": 4}, AxisType.Explicit, platform)
    m6, h6, h = _net(MLP, n=6), _net(HESSIAN, n=6), _net(HESSIAN)
    p66 = _net(dict(HESSIAN, widths=[5, 7, 3]))
    kw, hkw = _kw(MLP), _kw(HESSIAN)
    fn = functools.partial
    mlp6, hessian6 = (m6["params"], m6["x"], m6["y"]), (h6["params"], h6["x"], h6["y"])
    calls = {  # name: (function, arguments)
        "mesh is not a Mesh": (fn(sharded.mlp_grad, mesh="data", **kw), mlp6),
        "mesh without a data axis": (fn(sharded.conv2d_backward, mesh=no_data, **CONV),
                                     _conv_inputs()),
        "mlp_grad: batch 6 on data=4": (fn(sharded.mlp_grad, mesh=data4, **kw), mlp6),
        "conv2d_backward: batch 6 on data=4": (fn(sharded.conv2d_backward, mesh=data4, **CONV),
                                               _conv_inputs(n=6)),
        "rnn_backward: batch 6 on data=4": (fn(sharded.rnn_backward, mesh=data4),
                                            _rnn_inputs(n=6)),
        "hessian: batch 6 on data=4": (fn(sharded.hessian, mesh=data4, **hkw), hessian6),
        "hessian: P=66 on model=4": (fn(sharded.hessian, mesh=model4, **hkw),
                                     (p66["params"], p66["x"], p66["y"])),
        "hessian: mesh without a data axis": (fn(sharded.hessian, mesh=no_data, **hkw),
                                              (h["params"], h["x"], h["y"])),
        "network_grad: batch 6 on data=4": (fn(sharded.network_grad, NET, mesh=data4,
                                               loss=NET_LOSS), _network_inputs(n=6)),
        "network_hessian_diagonal: mesh without a data axis": (
            fn(sharded.network_hessian_diagonal, NET, mesh=no_data, loss=NET_LOSS),
            _network_inputs()),
    }
    out = {}
    for name, (call, args) in calls.items():
        try:
            jax.jit(call).lower(*args)  # trace only: the check must fire before any compile
            out[name] = dict(raised="", message="")
        except ValueError as err:
            out[name] = dict(raised="ValueError", message=str(err).splitlines()[0])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="where to write the JSON")
    parser.add_argument("--platform", default=None, help="cpu or gpu (default: JAX's)")
    parser.add_argument("--devices", type=int, default=None,
                        help="how many devices the meshes use (default: all of the platform's); "
                             "with fewer than 4 only the comparisons run, on data=N and model=N")
    args = parser.parse_args(argv)
    configure()
    devices = jax.devices(args.platform)
    count = args.devices or len(devices)
    if count > len(devices):
        print(f"--devices {count}: only {len(devices)} available ({devices})", file=sys.stderr)
        return 2
    result = dict(devices=[str(d) for d in devices[:count]], platform=devices[0].platform,
                  comparisons=comparisons(args.platform, count))
    if count >= DEVICES:  # the planted mutants and the registry cases need four devices
        with jax.default_device(devices[0]):
            registry_row, registry_planted = registry_rows(devices[0])
            result.update(planted={**planted(args.platform), **registry_planted},
                          bad_inputs=bad_inputs(args.platform), registry=registry_row)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
