"""Hand-derived gradients and the stagewise Hessian on a device mesh, with JAX sharding.

Each function takes a ``jax.sharding.Mesh`` with an axis named ``"data"``: the batch (the
samples) is split over it, every device runs the hand-derived backward of ``manual/`` on
its own slice inside ``jax.shard_map``, and the slices' results are combined with
``lax.psum`` over ``"data"``. Any other axis of the mesh holds replicas, except
``"model"`` in ``hessian``, which splits the Hessian's rows. The code never asks which
process or device it runs on: it names mesh axes only, so the same call runs on the
forced host devices of one CPU, the GPUs of one host, or a multi-host GPU cluster or TPU
slice after ``jax.distributed.initialize()`` (docs/design.md, "Devices and sharding").

Combining the shards (S shards of n_s = N / S samples each, batch B = ∪_s B_s)::

    conv2d_backward  dX = [dX_1; ...; dX_S] (each shard's own rows, left where they are)
                     dW = Σ_s dW_s,  db = Σ_s db_s        (dW, db sum over the batch)
    rnn_backward     dxs, dh0: each shard's own columns of the batch axis (axis 1 of
                     xs, time-major; axis 0 of h0); dparams = Σ_s dparams_s
    mlp_grad         E = 1/N Σ_n ℓ_n + ½ λ Σ_l ||W_l||²
                       = Σ_s (n_s / N) Ē_s + ½ λ Σ_l ||W_l||²,  Ē_s = 1/n_s Σ_{n ∈ B_s} ℓ_n
                     so ∂E/∂θ = Σ_s (n_s / N) ∇Ē_s + λ W:
                     each shard runs manual.mlp.grad with λ = 0 (the mean over its own
                     n_s samples), scales it by n_s / N, the shards are psum-ed, and λ W
                     is added once, after the sum. (Adding λ W on every shard before the
                     psum would count it S times; forgetting n_s / N would count the data
                     term S times.)
    hessian          H = Σ_s (n_s / N) H̄_s + λ I_w = Σ_s (n_s / N) (H̄_s + λ I_w), since
                     Σ_s n_s / N = 1: each shard's rows are those of its own penalised
                     Hessian, psum-ed and scaled by n_s / N (equal on every shard), so λ
                     arrives once in all; the device at model index j computes only
                     rows [j R, (j + 1) R), R = P / n_model. (I_w: the identity on the
                     weight coordinates.)

    network_grad     E = 1/N Σ_n ℓ_n = Σ_s (n_s / N) Ē_s (manual.network has no penalty):
    network_hessian_diagonal
                     ∂E/∂θ = Σ_s (n_s / N) ∇Ē_s and diag H = Σ_s (n_s / N) diag H̄_s: each
                     shard runs manual.network.grad / hessian_diagonal on its own n_s
                     samples, scales by n_s / N, and the shards are psum-ed
    network_per_sample_grads
                     ∇ℓ_n for every sample n, no sum: each shard's own rows, left where
                     they are (every leaf's leading N axis split over "data")

The Hessian is returned sharded by rows over ``"model"`` (replicated over ``"data"``):
each device holds R = P / n_model rows, about P² / n_model numbers, and computes
only those rows, straight from the stagewise blocks (``manual.stagewise.hessian_rows``,
about 2 N R P flops); nothing of size P² is ever formed on one device. n_model must
divide P (a ValueError naming ``mesh`` says so otherwise): JAX's explicitly sharded
arrays cannot split a dimension unevenly.

Inputs may live anywhere (host arrays, one device, already sharded): each function puts
them on the mesh with ``jax.device_put(..., NamedSharding(mesh, spec))``, which works
eagerly and under ``jax.jit`` on meshes of either axis type (Auto or Explicit). Under
``jax.jit`` the arguments must not be committed to a single device outside the mesh
(jit refuses to mix device sets); pass uncommitted or mesh-sharded arrays.

Example::

    >>> import jax, jax.numpy as jnp
    >>> from suite import sharded
    >>> mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    >>> params = ((jnp.ones((2, 3)), jnp.zeros(3)), (jnp.ones((3, 1)), jnp.zeros(1)))
    >>> (dw1, db1), (dw2, db2) = sharded.mlp_grad(params, jnp.ones((4, 2)), jnp.zeros((4, 1)),
    ...                                           mesh=mesh, activation="relu", loss="mse")
    >>> dw2.ravel().tolist()
    [12.0, 12.0, 12.0]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from manual import conv, mlp, network, rnn, stagewise

__all__ = ["DATA", "MODEL", "check_mesh", "mlp_grad", "conv2d_backward", "rnn_backward",
           "hessian", "network_grad", "network_hessian_diagonal", "network_per_sample_grads"]

DATA, MODEL = "data", "model"


def check_mesh(mesh: Any) -> None:
    """``mesh`` must be a ``jax.sharding.Mesh`` with an axis named ``"data"``.

    Raises:
      ValueError naming ``mesh`` and what it got.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh with an axis named {DATA!r}, got "
                         f"{type(mesh).__name__}")
    if DATA not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {DATA!r} (the batch is split over it), "
                         f"got axes {dict(mesh.shape)}")


def _check_batch(name: str, shape: tuple, axis: int, mesh: Mesh) -> int:
    """The global batch size; it must split evenly over the mesh's "data" axis."""
    size, shards = shape[axis], mesh.shape[DATA]
    if size % shards:
        raise ValueError(f"{name} has batch size {size} (axis {axis} of shape {tuple(shape)}), "
                         f"which the mesh's {DATA!r} axis of {shards} devices does not divide")
    return size


def _place(tree: Any, mesh: Mesh, spec: P) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, spec))


def _scaled(tree: Any, factor: float) -> Any:
    return jax.tree_util.tree_map(lambda t: t * factor, tree)


def _add_weight_decay(grads: Any, params: Any, l2: Any) -> Any:
    """∂/∂W of ½ λ Σ ||W_l||² = λ W_l added to each dW (biases untouched); once, globally."""
    if isinstance(l2, (int, float)) and l2 == 0:
        return grads
    return tuple((dw + jnp.asarray(l2, w.dtype) * w, db)
                 for (dw, db), (w, _) in zip(grads, params, strict=True))


def _psum_data(tree: Any) -> Any:
    return lax.psum(tree, DATA)


def mlp_grad(params: Any, x: Any, y: Any, *, mesh: Mesh, activation: str, loss: str,
             l2: Any = 0.0) -> Any:
    """∂E/∂θ of ``manual.mlp.loss`` over the global batch, the batch split over "data".

    Each shard runs ``manual.mlp.grad`` (λ = 0) on its n_s samples, scales it by n_s / N,
    the shards are summed with ``psum`` and λ W is added once (module docstring).

    Args:
      params: tuple of (w, b) pairs, w: (n_{l-1}, n_l), b: (n_l,) (replicated).
      x: inputs (N, n_0), N divisible by the size of the "data" axis.
      y: targets (N, n_L) for "mse", labels (N,) for "softmax_cross_entropy".
      mesh: a Mesh with an axis "data".
      activation, loss, l2: as for ``manual.mlp.grad``.

    Returns:
      A tuple of (dw, db) pairs shaped like params, replicated over the mesh.
    """
    check_mesh(mesh)
    # Every shape and name check of the manual code, on the global shapes, costs nothing.
    jax.eval_shape(functools.partial(mlp.grad, activation=activation, loss=loss), params, x, y)
    n = _check_batch("x", x.shape, 0, mesh)
    share = (n // mesh.shape[DATA]) / n

    def shard(params, x, y):
        return _psum_data(_scaled(mlp.grad(params, x, y, activation=activation, loss=loss),
                                  share))

    grads = jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)),
                          out_specs=P())(_place(params, mesh, P()), _place(x, mesh, P(DATA)),
                                         _place(y, mesh, P(DATA)))
    return _add_weight_decay(grads, params, l2)


def conv2d_backward(x: Any, w: Any, b: Any, dy: Any, *, mesh: Mesh, stride: Any = 1,
                    padding: Any = 0, dilation: Any = 1, groups: int = 1) -> tuple:
    """``manual.conv.conv2d_backward`` with the images split over "data".

    dX stays split over "data" (each shard's rows are its own images); dW and db sum
    over the batch, so the shards' partial sums are psum-ed.

    Args:
      x: images (N, C_in, H, W), N divisible by the size of the "data" axis.
      w: kernels (C_out, C_in / groups, k_h, k_w); b: bias (C_out,) (replicated).
      dy: upstream gradient (N, C_out, H_out, W_out), split like x.
      mesh: a Mesh with an axis "data".
      stride, padding, dilation, groups: as for ``manual.conv.conv2d``.

    Returns:
      (dx, dw, db): dx sharded over "data" on axis 0, dw and db replicated.
    """
    check_mesh(mesh)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    jax.eval_shape(functools.partial(conv.conv2d_backward, **geometry), x, w, b, dy)
    _check_batch("x", x.shape, 0, mesh)

    def shard(x, w, b, dy):
        dx, dw, db = conv.conv2d_backward(x, w, b, dy, **geometry)
        return dx, _psum_data(dw), _psum_data(db)

    return jax.shard_map(shard, mesh=mesh, in_specs=(P(DATA), P(), P(), P(DATA)),
                         out_specs=(P(DATA), P(), P()))(
        _place(x, mesh, P(DATA)), _place(w, mesh, P()), _place(b, mesh, P()),
        _place(dy, mesh, P(DATA)))


def rnn_backward(params: Any, xs: Any, h0: Any, dhs: Any, *, mesh: Mesh,
                 truncation: int | None = None) -> tuple:
    """``manual.rnn.backward`` (BPTT) with the batch split over "data".

    Sequences are time-major, so the batch is axis 1 of xs and dhs and axis 0 of h0.
    dxs and dh0 stay split like their inputs; dparams sum over the batch and are psum-ed.

    Args:
      params: {"w_xh": (D, H), "w_hh": (H, H), "b": (H,)} (replicated).
      xs: inputs (T, N, D), N divisible by the size of the "data" axis.
      h0: initial hidden state (N, H).
      dhs: cotangent of every hidden state (T, N, H).
      mesh: a Mesh with an axis "data".
      truncation: as for ``manual.rnn.backward`` (static).

    Returns:
      (dparams, dxs, dh0): dparams replicated, dxs sharded on axis 1, dh0 on axis 0.
    """
    check_mesh(mesh)
    jax.eval_shape(functools.partial(rnn.backward, truncation=truncation), params, xs, h0, dhs)
    _check_batch("xs", xs.shape, 1, mesh)
    batch = P(None, DATA)

    def shard(params, xs, h0, dhs):
        dparams, dxs, dh0 = rnn.backward(params, xs, h0, dhs, truncation=truncation)
        return _psum_data(dparams), dxs, dh0

    return jax.shard_map(shard, mesh=mesh, in_specs=(P(), batch, P(DATA), batch),
                         out_specs=(P(), batch, P(DATA)))(
        _place(params, mesh, P()), _place(xs, mesh, batch), _place(h0, mesh, P(DATA)),
        _place(dhs, mesh, batch))


def hessian(params: Any, x: Any, y: Any, *, mesh: Mesh, activation: str, loss: str,
            l2: Any = 0.0) -> jax.Array:
    """The exact (P, P) Hessian of ``manual.mlp.loss``, rows over "model", samples over "data".

    The device at ("data" = i, "model" = j) computes rows [j R, (j + 1) R) of
    H̄_s + λ I_w, the penalised Hessian of its own n_s samples
    (``manual.stagewise.hessian_rows``), and the slabs are psum-ed over "data" and scaled
    by n_s / N: the result is H, with λ once (module docstring). R = P / n_model,
    n_model = 1 when the mesh has no "model" axis; n_model must divide P.

    Args:
      params: tuple of (w, b) pairs (replicated).
      x: inputs (N, n_0), N divisible by the size of the "data" axis.
      y: targets (N, n_L) for "mse", labels (N,) for "softmax_cross_entropy".
      mesh: a Mesh with an axis "data" and optionally an axis "model".
      activation, loss, l2: as for ``manual.stagewise.hessian``.

    Returns:
      (P, P) in ``ravel_pytree(params)`` order, sharded by rows over "model" and
      replicated over every other axis: each device holds about P² / n_model numbers.
    """
    check_mesh(mesh)
    kw = dict(activation=activation, loss=loss)
    jax.eval_shape(functools.partial(mlp.grad, **kw), params, x, y)
    n = _check_batch("x", x.shape, 0, mesh)
    share = (n // mesh.shape[DATA]) / n
    total = sum(w.size + b.size for w, b in params)
    parts = mesh.shape.get(MODEL, 1)
    if total % parts:
        raise ValueError(f"mesh: the {MODEL!r} axis ({parts} devices) must divide the number "
                         f"of parameters P = {total}, so that every device holds P / {parts} "
                         f"rows; got mesh axes {dict(mesh.shape)}")
    rows = total // parts

    def slab(j, params, x, y):  # rows [j R, (j + 1) R) of this shard's own H̄_s + λ I_w
        return stagewise.hessian_rows(params, x, y, j * rows, (j + 1) * rows, l2=l2, **kw)

    def shard(params, x, y):
        # The row ranges are static (they decide which blocks exist), so each device picks
        # its own of the ``parts`` compiled branches and runs only that one.
        j = lax.axis_index(MODEL) if parts > 1 else 0
        mine = (lax.switch(j, [functools.partial(slab, k) for k in range(parts)], params, x, y)
                if parts > 1 else slab(0, params, x, y))
        if mesh.shape[DATA] == 1:
            return mine
        # Σ_s (n_s / N)(H̄_s + λ I_w) = H: every shard has n_s = N / S, so scaling after the
        # sum is the same and keeps one slab-sized temporary; λ arrives once in all
        return _psum_data(mine) * share

    # check_vma=False: the varying-axis check would demand the psum over a "data" axis of
    # size 1 too (a slab-sized copy, skipped here), and it rejects scans of manual/ that
    # start from constant zeros (the stagewise sample chunking). The psum is what makes
    # the slabs equal across "data"; the tests plant its absence.
    return jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)),
                         out_specs=P(MODEL) if parts > 1 else P(), check_vma=False)(
        _place(params, mesh, P()), _place(x, mesh, P(DATA)), _place(y, mesh, P(DATA)))


def _network_batch_mean(fn: Any, net: Any, params: Any, x: Any, y: Any, mesh: Mesh,
                        loss: Any) -> Any:
    """Σ_s (n_s / N) fn(shard s), fn a batch-mean quantity of manual.network (grad, the
    Hessian's diagonal), the batch split over "data"."""
    check_mesh(mesh)
    # manual.network's own checks (params against the layers, every layer's shapes) on
    # the global shapes, before anything is placed or compiled
    jax.eval_shape(functools.partial(fn, net, loss=loss), params, x, y)
    n = _check_batch("x", x.shape, 0, mesh)
    _check_batch("y", y.shape, 0, mesh)
    share = (n // mesh.shape[DATA]) / n

    def shard(params, x, y):
        return _psum_data(_scaled(fn(net, params, x, y, loss=loss), share))

    return jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)), out_specs=P(),
                         check_vma=False)(
        _place(params, mesh, P()), _place(x, mesh, P(DATA)), _place(y, mesh, P(DATA)))


def network_grad(net: Any, params: Any, x: Any, y: Any, *, mesh: Mesh, loss: Any) -> Any:
    """∂E/∂θ of ``manual.network.loss`` over the global batch, the batch split over "data".

    Each shard runs ``manual.network.grad`` on its n_s samples (their mean), scales it
    by n_s / N, and the shards are summed with ``psum`` (module docstring). No penalty:
    add λ W to the weights' entries yourself, once, after the call.

    Args:
      net: a tuple of manual.network layers.
      params: one entry per layer, as manual.network (replicated).
      x: inputs, batch first (N, ...), N divisible by the size of the "data" axis.
      y: targets (N, M) for "mse", labels (N,) for "softmax_cross_entropy", split like x.
      mesh: a Mesh with an axis "data".
      loss: as for ``manual.network.grad``.

    Returns:
      params-shaped, replicated over the mesh.
    """
    return _network_batch_mean(network.grad, net, params, x, y, mesh, loss)


def network_hessian_diagonal(net: Any, params: Any, x: Any, y: Any, *, mesh: Mesh,
                             loss: Any) -> Any:
    """The exact diagonal of the Hessian of ``manual.network.loss``, the batch split over
    "data": Σ_s (n_s / N) diag H̄_s, each shard's ``manual.network.hessian_diagonal`` of
    its own samples, psum-ed (module docstring). Arguments as ``network_grad``.

    Returns:
      params-shaped, replicated over the mesh.
    """
    return _network_batch_mean(network.hessian_diagonal, net, params, x, y, mesh, loss)


def network_per_sample_grads(net: Any, params: Any, x: Any, y: Any, *, mesh: Mesh,
                             loss: Any) -> Any:
    """∇ℓ_n of every sample's own loss (not divided by N), the batch split over "data".

    Nothing is summed: each shard runs ``manual.network.per_sample_grads`` on its own
    samples and keeps them. Arguments as ``network_grad``.

    Returns:
      params-shaped, each leaf with a leading N axis sharded over "data" (a shard's rows
      are its own samples').
    """
    check_mesh(mesh)
    jax.eval_shape(functools.partial(network.per_sample_grads, net, loss=loss), params, x, y)
    _check_batch("x", x.shape, 0, mesh)
    _check_batch("y", y.shape, 0, mesh)

    def shard(params, x, y):
        return network.per_sample_grads(net, params, x, y, loss=loss)

    return jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)),
                         out_specs=P(DATA), check_vma=False)(
        _place(params, mesh, P()), _place(x, mesh, P(DATA)), _place(y, mesh, P(DATA)))
