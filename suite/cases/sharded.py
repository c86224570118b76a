"""Sharded cases: suite.sharded on a device mesh against the single-device manual/ result.

Each case names a mesh shape (``MESHES``) and needs that many devices (``Case.devices``);
its manual side builds the mesh from the first devices of the run's platform
(``case_mesh``) and runs a function of suite.sharded on it; its reference is the same
derivation of manual/ on one device, over the global batch. The finite-difference witness
(float64) checks both against the objective they differentiate, so a mistake that the
sharded and the single-device code shared would still show.

The cases run where the process has the devices: ``backprop-suite report --devices 4``
(which forces four host devices on a CPU), a multi-GPU host, a TPU slice. Elsewhere the
report leaves them out with a note and pytest skips them; suite/tests/test_sharded.py
runs them in a subprocess with four forced CPU devices.
"""

from __future__ import annotations

import collections
import functools
import math

import jax
import jax.numpy as jnp

from manual import conv, mlp, rnn, stagewise
from suite import sharded
from suite.cases import Case, Family, register, register_family
from suite.cases.common import mlp_inputs, normal, split
from suite.cases.rnn import builder as rnn_builder

__all__ = ["MESHES", "case_mesh", "mlp_case", "hessian_case", "conv_case", "rnn_case"]

register_family(Family(
    name="sharded",
    title="On a device mesh: data-parallel gradients and the row-sharded stagewise Hessian",
    description="suite.sharded runs the hand-derived backward of manual/ inside jax.shard_map: "
                "the batch is split over the mesh axis \"data\", each device differentiates "
                "its own slice, and lax.psum combines the slices (a batch-mean gradient "
                "scaled by n_s/N per shard, λW added once). The stagewise Hessian is also "
                "split by rows over \"model\": each device computes and holds only its "
                "P/n_model rows. Each row compares the sharded result with manual/ on one "
                "device over the whole batch, with the finite-difference witness; the cases "
                "need four devices (backprop-suite report --devices 4). On a CPU those are "
                "forced host devices sharing one memory and the machine's cores: the times "
                "and ratios show the cost of the mesh machinery at toy sizes, never a speed-up.",
))

# Mesh shapes by label: every mesh has a "data" axis (size 1 when only rows are split).
MESHES = {
    "data4": {"data": 4},
    "data2-model2": {"data": 2, "model": 2},
    "model4": {"data": 1, "model": 4},
}


def case_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
    """A mesh of ``shape`` over the first devices of the platform the run computes on.

    ``suite.run.run_all`` runs under ``jax.default_device(device)``; the mesh takes that
    device's platform (JAX's default backend outside it). The first devices in
    ``jax.devices()`` order, which on several hosts is the global order every process
    agrees on.
    """
    default = jax.config.jax_default_device
    platform = getattr(default, "platform", default)  # a Device, a platform name or None
    devices = jax.devices(platform)
    count = math.prod(shape.values())
    if len(devices) < count:
        raise ValueError(f"a mesh {shape} needs {count} devices, this process has "
                         f"{len(devices)} {devices[0].platform} device(s)")
    return jax.make_mesh(tuple(shape.values()), tuple(shape), devices=devices[:count])


_SHORT = {"mse": "mse", "softmax_cross_entropy": "ce"}


def _sizes(mesh, **sizes):
    return dict(mesh="x".join(f"{k}{v}" for k, v in MESHES[mesh].items()), **sizes)


def _mlp_builder(widths, n, activation, loss):
    def build(key, dtype):
        return mlp_inputs(key, widths, n, dtype, loss=loss, activation=activation)
    return build


def _params_count(widths):
    return sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))


def mlp_case(mesh, widths, n, activation, loss, l2, tier="test"):
    """sharded.mlp_grad against manual.mlp.grad on one device (witness: mlp.loss)."""
    kw = dict(activation=activation, loss=loss, l2=l2)
    return Case(
        name=f"sharded/mlp_grad/{mesh}-{activation}-{_SHORT[loss]}-l2{l2:g}", family="sharded",
        build=_mlp_builder(widths, n, activation, loss),
        manual=lambda i: sharded.mlp_grad(i["params"], i["x"], i["y"],
                                          mesh=case_mesh(MESHES[mesh]), **kw),
        reference=lambda i: mlp.grad(i["params"], i["x"], i["y"], **kw),
        objective=lambda i: mlp.loss(i["params"], i["x"], i["y"], **kw), wrt=("params",),
        devices=math.prod(MESHES[mesh].values()), tier=tier,
        sizes=_sizes(mesh, widths="-".join(map(str, widths)), N=n))


def hessian_case(mesh, widths, n, activation, loss, l2, tier="test"):
    """sharded.hessian against manual.stagewise.hessian on one device (witness: vᵀHv)."""
    kw = dict(activation=activation, loss=loss, l2=l2)
    return Case(
        name=f"sharded/hessian/{mesh}-{activation}-{_SHORT[loss]}-l2{l2:g}", family="sharded",
        build=_mlp_builder(widths, n, activation, loss),
        manual=lambda i: sharded.hessian(i["params"], i["x"], i["y"],
                                         mesh=case_mesh(MESHES[mesh]), **kw),
        reference=lambda i: stagewise.hessian(i["params"], i["x"], i["y"], **kw),
        objective=lambda i: mlp.loss(i["params"], i["x"], i["y"], **kw), wrt=("params",),
        order=2, devices=math.prod(MESHES[mesh].values()), tier=tier,
        sizes=_sizes(mesh, widths="-".join(map(str, widths)), N=n, P=_params_count(widths)))


ConvGrads = collections.namedtuple("ConvGrads", ["dx", "dw", "db"])


def conv_case(mesh, n, c_in, c_out, size, kernel, tier="test", **geometry):
    """sharded.conv2d_backward against manual.conv.conv2d_backward (witness: <dy, conv2d>)."""
    def build(key, dtype):
        k = split(key, ["x", "w", "b", "dy"])
        x = normal(k["x"], (n, c_in) + size, dtype)
        w = normal(k["w"], (c_out, c_in // geometry.get("groups", 1)) + kernel, dtype)
        b = normal(k["b"], (c_out,), dtype)
        out = jax.eval_shape(functools.partial(conv.conv2d, **geometry), x, w, b).shape
        return dict(x=x, w=w, b=b, dy=normal(k["dy"], out, dtype))

    def args(i):
        return i["x"], i["w"], i["b"], i["dy"]

    label = "-".join(f"{k}{v}" for k, v in geometry.items())
    return Case(
        name=f"sharded/conv2d_backward/{mesh}-{label}", family="sharded", build=build,
        manual=lambda i: ConvGrads(*sharded.conv2d_backward(
            *args(i), mesh=case_mesh(MESHES[mesh]), **geometry)),
        reference=lambda i: ConvGrads(*conv.conv2d_backward(*args(i), **geometry)),
        objective=lambda i: jnp.vdot(i["dy"], conv.conv2d(i["x"], i["w"], i["b"], **geometry)),
        wrt=("x", "w", "b"), devices=math.prod(MESHES[mesh].values()), tier=tier,
        sizes=_sizes(mesh, N=n, C=f"{c_in}->{c_out}", HW="x".join(map(str, size)),
                     k="x".join(map(str, kernel)), **geometry))


RnnGrads = collections.namedtuple("RnnGrads", ["dparams", "dxs", "dh0"])


def rnn_case(mesh, t, n, d, h, truncation=None, tier="test"):
    """sharded.rnn_backward against manual.rnn.backward (witness, full BPTT: <dhs, hs>)."""
    def args(i):
        return i["params"], i["xs"], i["h0"], i["dhs"]

    objective = None
    if truncation is None:  # a truncated gradient is the gradient of no objective
        def objective(i):
            return jnp.vdot(i["dhs"], rnn.forward(i["params"], i["xs"], i["h0"]))

    return Case(
        name=f"sharded/rnn_backward/{mesh}-T{t}-{'full' if truncation is None else truncation}",
        family="sharded", build=rnn_builder(t, n, d, h),
        manual=lambda i: RnnGrads(*sharded.rnn_backward(
            *args(i), mesh=case_mesh(MESHES[mesh]), truncation=truncation)),
        reference=lambda i: RnnGrads(*rnn.backward(*args(i), truncation=truncation)),
        objective=objective, wrt=("params", "xs", "h0") if objective else (),
        devices=math.prod(MESHES[mesh].values()), tier=tier,
        sizes=_sizes(mesh, T=t, N=n, D=d, H=h, truncation=truncation or "full"))


# P = 64 and 56: both divisible by 4, so every mesh can split the rows.
register(mlp_case("data4", [5, 6, 4], 8, "tanh", "softmax_cross_entropy", 0.1))
register(mlp_case("data2-model2", [3, 4, 4, 4], 8, "relu", "mse", 0.01))
register(hessian_case("data4", [5, 6, 4], 8, "tanh", "softmax_cross_entropy", 0.1))
register(hessian_case("data2-model2", [3, 4, 4, 4], 8, "softplus", "mse", 0.0))
register(hessian_case("model4", [3, 4, 4, 4], 8, "sigmoid", "softmax_cross_entropy", 0.05))
register(conv_case("data4", 8, 4, 6, (7, 7), (3, 3), stride=2, padding=1, groups=2))
# groups on a 2-D mesh: compiled in one program with the sharded side, this reference
# would be partitioned too, and XLA gets a grouped convolution's dW wrong there (run.py)
register(conv_case("data2-model2", 4, 4, 6, (8, 6), (2, 3), dilation=2, groups=2))
register(rnn_case("data4", 6, 8, 3, 5))
register(rnn_case("data2-model2", 7, 4, 3, 5, truncation=3))
