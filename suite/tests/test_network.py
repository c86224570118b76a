"""manual.network against JAX autodiff of an independent plain-jnp forward.

Every function (forward, loss, grad, per_sample_grads, hvp, hessian_diagonal,
gauss_newton_diagonal, hessian_blocks, hessian, gauss_newton) is compared normwise in
float64 with jax.grad, jax.vmap(jax.grad), jax.jvp(jax.grad) and jax.hessian of a forward
written here with jax.lax / jax.nn only (it shares no line with manual/). The MLP written
as a network must give what manual.stagewise gives. Planted bugs (layers subclassed with
one rule broken) must FAIL the same comparison.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from manual import network as nw

TOL = 1e-12  # float64 normwise: each side is a few hundred roundings of O(1) numbers

_ACT = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
        "softplus": jax.nn.softplus, "gelu": lambda z: jax.nn.gelu(z, approximate=True)}


def _pads(padding):
    return [(padding, padding)] * 2 if isinstance(padding, int) else [tuple(padding)] * 2


def _heads(z, h):
    b, t, d = z.shape
    return z.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)


def plain_forward(net, params, x):
    """The network's forward with jax.lax / jax.nn, dispatching on the layer type."""
    for layer, p in zip(net, params, strict=True):
        if isinstance(layer, nw.Residual):
            x = x + plain_forward(layer.layers, p, x)
        elif isinstance(layer, nw.Linear):
            x = x @ p[0] + p[1].reshape((1,) * (x.ndim - 1) + (-1,))
        elif isinstance(layer, nw.Conv2d):
            o = layer.options
            x = jax.lax.conv_general_dilated(
                x, p[0], (o["stride"],) * 2, _pads(o["padding"]),
                rhs_dilation=(o["dilation"],) * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                feature_group_count=o["groups"],
                precision=jax.lax.Precision.HIGHEST) + p[1][None, :, None, None]
        elif isinstance(layer, nw.Act):
            x = _ACT[layer.activation.name](x)
        elif isinstance(layer, (nw.MaxPool2d, nw.AvgPool2d)):
            o = layer.options
            k, s = o["window"], o["stride"] or o["window"]
            pads = ((0, 0), (0, 0)) + tuple(_pads(o["padding"]))
            if isinstance(layer, nw.MaxPool2d):
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, k, k), (1, 1, s, s),
                                          pads)
            else:
                x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, k, k), (1, 1, s, s),
                                          pads) / (k * k)
        elif isinstance(layer, nw.Flatten):
            x = x.reshape(x.shape[0], -1)
        elif isinstance(layer, nw.GlobalAvgPool):
            x = x.mean(axis=(2, 3))
        elif isinstance(layer, nw.MeanOverTime):
            x = x.mean(axis=1)
        elif isinstance(layer, nw.LayerNorm):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            row = (1,) * (x.ndim - 1) + (-1,)
            x = (x - mu) / jnp.sqrt(var + layer.eps) * p[0].reshape(row) + p[1].reshape(row)
        elif isinstance(layer, nw.SelfAttention):
            b, t, d = x.shape
            h = layer.heads
            q, k, v = (_heads(x @ p[name], h) for name in ("w_q", "w_k", "w_v"))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
            if layer.causal:
                s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
            o = jax.nn.softmax(s, axis=-1) @ v
            x = o.transpose(0, 2, 1, 3).reshape(b, t, d) @ p["w_o"]
        else:
            raise AssertionError(layer)
    return x


def plain_loss(net, params, x, y, loss):
    z = plain_forward(net, params, x)
    if loss == "mse":
        return 0.5 * jnp.sum((z - y) ** 2) / z.shape[0]
    return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(z.shape[0]), y])


def _randomised(params, key, scale=0.3):
    """init's params moved off their defaults (biases, beta nonzero; gamma not one)."""
    flat, unravel = ravel_pytree(params)
    return unravel(flat + scale * jax.random.normal(key, flat.shape, flat.dtype))


def _case(net, x_shape, sizes, loss, m, seed):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, x_shape, jnp.float64)
    params = _randomised(nw.init(net, k2, x_shape, sizes, dtype=jnp.float64), k3)
    n = x_shape[0]
    y = (jax.random.randint(k4, (n,), 0, m) if loss == "softmax_cross_entropy"
         else jax.random.normal(k4, (n, m), jnp.float64))
    return net, params, x, y, loss


def mlp():
    net = (nw.Linear(), nw.Act("tanh"), nw.Linear(), nw.Act("sigmoid"), nw.Linear())
    return _case(net, (6, 4), (5, None, 4, None, 3), "softmax_cross_entropy", 3, 0)


def mlp_layernorm():
    net = (nw.Linear(), nw.LayerNorm(), nw.Act("tanh"), nw.Linear())
    return _case(net, (5, 3), (6, None, None, 2), "mse", 2, 1)


def cnn():
    net = (nw.Conv2d(padding=1), nw.Act("relu"), nw.MaxPool2d(2), nw.Conv2d(padding=1),
           nw.Act("tanh"), nw.AvgPool2d(2), nw.Flatten(), nw.Linear())
    return _case(net, (3, 2, 6, 6), ((3, 3), None, None, (4, 3), None, None, None, 3),
                 "softmax_cross_entropy", 3, 2)


def conv_options():
    net = (nw.Conv2d(stride=2, padding=1, dilation=1, groups=2), nw.Act("softplus"),
           nw.Conv2d(dilation=2, groups=1), nw.Act("gelu"), nw.MaxPool2d(2, stride=1),
           nw.GlobalAvgPool(), nw.Linear())
    return _case(net, (2, 4, 9, 9), ((4, 3), None, (3, 2), None, None, None, 2),
                 "softmax_cross_entropy", 2, 3)


def resnet():
    net = (nw.Conv2d(padding=1), nw.Act("relu"),
           nw.Residual(nw.Conv2d(padding=1), nw.Act("softplus"), nw.Conv2d(padding=1)),
           nw.Act("relu"), nw.GlobalAvgPool(), nw.Linear())
    return _case(net, (3, 2, 5, 5), ((3, 3), None, ((3, 3), None, (3, 3)), None, None, 3),
                 "softmax_cross_entropy", 3, 4)


def _transformer(causal, loss, seed):
    net = (nw.Residual(nw.LayerNorm(), nw.SelfAttention(2, causal=causal)),
           nw.Residual(nw.LayerNorm(), nw.Linear(), nw.Act("gelu"), nw.Linear()),
           nw.LayerNorm(), nw.MeanOverTime(), nw.Linear())
    return _case(net, (3, 4, 6), ((None, None), (None, 10, None, 6), None, None, 3), loss, 3,
                 seed)


def transformer_causal():
    return _transformer(True, "softmax_cross_entropy", 5)


def transformer():
    return _transformer(False, "mse", 6)


CASES = {f.__name__: f for f in (mlp, mlp_layernorm, cnn, conv_options, resnet,
                                 transformer_causal, transformer)}


def normwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _flat(tree):
    return ravel_pytree(tree)[0]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    net, params, x, y, loss = CASES[request.param]()
    flat, unravel = ravel_pytree(params)
    h = jax.hessian(lambda f: plain_loss(net, unravel(f), x, y, loss))(flat)
    return request.param, (net, params, x, y, loss), np.asarray(h)


def _check_all(args, h, manual=nw):
    """Every function's normwise error against its autodiff oracle."""
    net, params, x, y, loss = args
    flat, unravel = ravel_pytree(params)
    errors = {}
    e = plain_loss(net, params, x, y, loss)
    errors["forward"] = normwise(manual.forward(net, params, x), plain_forward(net, params, x))
    errors["loss"] = abs(float(manual.loss(net, params, x, y, loss=loss) - e)) / abs(float(e))
    errors["grad"] = normwise(_flat(manual.grad(net, params, x, y, loss=loss)),
                              _flat(jax.grad(plain_loss, 1)(net, params, x, y, loss)))
    per = jax.vmap(lambda xi, yi: _flat(jax.grad(plain_loss, 1)(net, params, xi[None],
                                                                yi[None], loss)))(x, y)
    mine = manual.per_sample_grads(net, params, x, y, loss=loss)
    errors["per_sample_grads"] = normwise(jax.vmap(_flat)(mine), per)
    v = jax.random.normal(jax.random.PRNGKey(7), flat.shape, flat.dtype)
    jvp = jax.jvp(lambda f: _flat(jax.grad(plain_loss, 1)(net, unravel(f), x, y, loss)),
                  (flat,), (v,))[1]
    errors["hvp"] = normwise(_flat(manual.hvp(net, params, x, y, unravel(v), loss=loss)), jvp)
    errors["hessian_diagonal"] = normwise(
        _flat(manual.hessian_diagonal(net, params, x, y, loss=loss)), np.diag(h))
    blocks = manual.hessian_blocks(net, params, x, y, loss=loss)
    sizes = [sum(a.size for a in jax.tree_util.tree_leaves(p)) for p in params]
    offsets = np.concatenate([[0], np.cumsum([s for s in _block_sizes(net, params)])])
    errors["hessian_blocks"] = max(
        normwise(b, h[o:o + b.shape[0], o:o + b.shape[0]])
        for b, o in zip(blocks, offsets, strict=False))
    assert sum(b.shape[0] for b in blocks) == sum(sizes)
    errors["hessian"] = normwise(manual.hessian(net, params, x, y, loss=loss), h)
    g = _gauss_newton(net, params, x, y, loss)
    errors["gauss_newton"] = normwise(manual.gauss_newton(net, params, x, y, loss=loss), g)
    errors["gauss_newton_diagonal"] = normwise(
        _flat(manual.gauss_newton_diagonal(net, params, x, y, loss=loss)), np.diag(g))
    return errors


def _block_sizes(net, params):
    sizes = []
    for layer, p in zip(net, params, strict=True):
        if isinstance(layer, nw.Residual):
            sizes += _block_sizes(layer.layers, p)
        elif jax.tree_util.tree_leaves(p):
            sizes.append(sum(a.size for a in jax.tree_util.tree_leaves(p)))
    return sizes


def _gauss_newton(net, params, x, y, loss):
    """Σₙ Jₙᵀ ℓ''ₙ Jₙ / N from jax.jacrev of the plain forward and jax.hessian of ℓ."""
    flat, unravel = ravel_pytree(params)
    z = plain_forward(net, params, x)
    jac = jax.jacrev(lambda f: plain_forward(net, unravel(f), x))(flat)      # (N, M, P)

    def ell(zz):
        return plain_loss(((nw.Flatten(),)), ((),), zz, y, loss)
    hz = jax.hessian(ell)(z)                                                # (N, M, N, M)
    return np.einsum("nap,nanb,nbq->pq", jac, hz, jac)


def test_every_function_matches_autodiff(case):
    name, args, h = case
    errors = _check_all(args, h)
    bad = {k: v for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{name}: {bad}"
