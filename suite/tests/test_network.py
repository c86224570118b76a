"""manual.network against JAX autodiff of an independent plain-jnp forward.

Every function (forward, loss, grad, per_sample_grads, hvp, hessian_diagonal,
gauss_newton_diagonal, hessian_blocks, hessian, gauss_newton) is compared normwise in
float64 with jax.grad, jax.vmap(jax.grad), jax.jvp(jax.grad) and jax.hessian of a forward
written here with jax.lax / jax.nn only (it shares no line with manual/). The MLP written
as a network must give what manual.stagewise gives. Planted bugs (layers subclassed with
one rule broken) must FAIL the same comparison.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from manual import network as nw
from manual import stagewise

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


@functools.cache
def _oracle_hessian(name):
    net, params, x, y, loss = CASES[name]()
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: plain_loss(net, unravel(f), x, y, loss))(flat))


def _case(net, x_shape, sizes, loss, m, seed):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, x_shape, jnp.float64)
    params = _randomised(nw.init(net, k2, x_shape, sizes, dtype=jnp.float64), k3)
    n = x_shape[0]
    y = (jax.random.randint(k4, (n,), 0, m) if loss == "softmax_cross_entropy"
         else jax.random.normal(k4, (n, m), jnp.float64))
    return net, params, x, y, loss


@functools.cache
def mlp():
    net = (nw.Linear(), nw.Act("tanh"), nw.Linear(), nw.Act("sigmoid"), nw.Linear())
    return _case(net, (6, 4), (5, None, 4, None, 3), "softmax_cross_entropy", 3, 0)


@functools.cache
def mlp_layernorm():
    net = (nw.Linear(), nw.LayerNorm(), nw.Act("tanh"), nw.Linear())
    return _case(net, (5, 3), (6, None, None, 2), "mse", 2, 1)


@functools.cache
def cnn():
    net = (nw.Conv2d(padding=1), nw.Act("relu"), nw.MaxPool2d(2), nw.Conv2d(padding=1),
           nw.Act("tanh"), nw.AvgPool2d(2), nw.Flatten(), nw.Linear())
    return _case(net, (3, 2, 6, 6), ((3, 3), None, None, (4, 3), None, None, None, 3),
                 "softmax_cross_entropy", 3, 2)


@functools.cache
def conv_options():
    net = (nw.Conv2d(stride=2, padding=1, dilation=1, groups=2), nw.Act("softplus"),
           nw.Conv2d(dilation=2, groups=1), nw.Act("gelu"), nw.MaxPool2d(2, stride=1),
           nw.GlobalAvgPool(), nw.Linear())
    return _case(net, (2, 4, 9, 9), ((4, 3), None, (3, 2), None, None, None, 2),
                 "softmax_cross_entropy", 2, 3)


@functools.cache
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


@functools.cache
def transformer_causal():
    return _transformer(True, "softmax_cross_entropy", 5)


@functools.cache
def transformer():
    return _transformer(False, "mse", 6)


CASES = {f.__name__: f for f in (mlp, mlp_layernorm, cnn, conv_options, resnet,
                                 transformer_causal, transformer)}


def normwise(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _flat(tree):
    return ravel_pytree(tree)[0]


# Every function on every case compiles ten programs and three oracles per case (minutes
# on a loaded 2-core machine), so all of them are slow, and so are the planted-bug
# diagonals of the CNN, the ResNet block and the causal transformer below (each against
# the oracle first); make test keeps the MLP against stagewise and the bad-input tests
FAST = ()


@pytest.fixture(scope="module", params=[
    name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(CASES)])
def case(request):
    return request.param, CASES[request.param](), _oracle_hessian(request.param)


@functools.cache
def _jit(name):
    static = () if name == "forward" else ("loss",)
    return jax.jit(getattr(nw, name), static_argnums=0, static_argnames=static)


class _Jitted:
    """manual.network's functions under jax.jit (net and loss static)."""

    def __getattr__(self, name):
        return _jit(name)


def _check_all(args, h):
    """Every function's normwise error against its autodiff oracle."""
    net, params, x, y, loss = args
    manual = _Jitted()
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


# --- an MLP written as a network is manual.stagewise ------------------------------------

def test_mlp_as_network_is_stagewise():
    net, params, x, y, loss = mlp()
    pairs = tuple(p for p in params if p)
    activation = ["tanh", "sigmoid"]
    manual = _Jitted()
    for mine, theirs in (
            (manual.hessian(net, params, x, y, loss=loss),
             stagewise.hessian(pairs, x, y, activation=activation, loss=loss)),
            (_flat(manual.hessian_diagonal(net, params, x, y, loss=loss)),
             _flat(stagewise.hessian_diagonal(pairs, x, y, activation=activation, loss=loss))),
            (jnp.concatenate([b.ravel() for b in manual.hessian_blocks(net, params, x, y,
                                                                       loss=loss)]),
             jnp.concatenate([b.ravel() for b in stagewise.hessian_blocks(
                 pairs, x, y, activation=activation, loss=loss)]))):
        assert mine.shape == theirs.shape
        assert normwise(mine, theirs) <= TOL


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, match", [
    (lambda p: p[:-1], "one entry per layer"),
    (lambda p: (p[0], p[1], ((p[2][0][0][:, :1], p[2][0][1]), (), p[2][2])) + p[3:],
     r"layer 2\.0: .*Conv2d"),
    (lambda p: p[:5] + ((p[5][0][:-1], p[5][1]),), r"layer 5: Linear expects w"),
    (lambda p: (p[0], (p[0][1],)) + p[2:], r"layer 1: Act has no parameters"),
    (lambda p: p[:5] + ((p[5][0].astype(jnp.float32), p[5][1]),), r"layer 5: w .*dtype"),
])
def test_bad_params_name_the_layer(mutate, match):
    net, params, x, y, loss = resnet()
    with pytest.raises(ValueError, match=match):
        nw.hessian_diagonal(net, mutate(params), x, y, loss=loss)


def test_bad_attention_and_layernorm_params_name_the_layer():
    net, params, x, y, loss = transformer_causal()
    attn = dict(params[0][1])
    del attn["w_q"]
    with pytest.raises(ValueError, match=r"layer 0\.1: SelfAttention params must be a dict"):
        nw.grad(net, ((params[0][0], attn),) + params[1:], x, y, loss=loss)
    ln = (params[2][0][:-1], params[2][1])
    with pytest.raises(ValueError, match=r"layer 2: LayerNorm gamma must have shape"):
        nw.forward(net, params[:2] + (ln,) + params[3:], x)


def test_bad_net_x_and_v():
    net, params, x, y, loss = mlp()
    with pytest.raises(ValueError, match="net must be"):
        nw.forward([], params, x)
    with pytest.raises(ValueError, match="x must be a floating-point batch"):
        nw.forward(net, params, x.astype(jnp.int32))
    with pytest.raises(ValueError, match="logits"):
        nw.forward(net[:1], params[:1], x[:, :, None].repeat(4, axis=2))
    with pytest.raises(ValueError, match="v must have the structure"):
        nw.hvp(net, params, x, y, params[:-1], loss=loss)


# --- planted bugs: one rule broken, the comparison FAILs ---------------------------------

class _NoCurvatureAct(nw.Act):
    """f'' dropped: the diagonal δ ⊙ f''(z) term of Ω_z is missing."""

    def second_order(self, p, state, dy):
        return None

    def second_order_diagonal(self, p, state, dy):  # the same term, as a diagonal
        return None


class _TransposedConv(nw.Conv2d):
    """The input gradient with the kernel not flipped: a transposed conv rule."""

    def pullback(self, p, x, c):
        w, b = p
        cx, g = super().pullback((w[:, :, ::-1, ::-1], b), x, c)
        return cx, super().pullback(p, x, c)[1]


class _NoCrossResidual(nw.Residual):
    """The two branches' columns kept apart: Ω_x = Ω_y + J_fᵀ Ω_y J_f, no cross term."""

    def join_columns(self, skip, branch, w_skip, w_branch):
        return (jnp.concatenate([skip, branch], axis=1),
                jnp.concatenate([w_skip, w_branch], axis=1))


class _NoRowTermLayerNorm(nw.LayerNorm):
    """The layer norm's dense per-row second-order term dropped."""

    def second_order(self, p, state, dy):
        return None


def _swap(net, old, new):
    out = []
    for layer in net:
        if isinstance(layer, nw.Residual):
            inner = _swap(layer.layers, old, new)
            cls = new if old is nw.Residual else type(layer)
            out.append(cls(*inner))
        elif type(layer) is old:
            out.append(_rebuilt(layer, new))
        else:
            out.append(layer)
    return tuple(out)


def _rebuilt(layer, cls):
    planted = cls.__new__(cls)
    planted.__dict__.update(layer.__dict__)
    return planted


@pytest.mark.slow  # an oracle jax.hessian per net; make test plants f'' in the registry row
@pytest.mark.parametrize("maker, old, new", [
    (cnn, nw.Act, _NoCurvatureAct),
    (cnn, nw.Conv2d, _TransposedConv),
    (resnet, nw.Residual, _NoCrossResidual),
    (transformer_causal, nw.LayerNorm, _NoRowTermLayerNorm),
])
def test_planted_bug_fails(maker, old, new):
    net, params, x, y, loss = maker()
    h = np.diag(_oracle_hessian(maker.__name__))
    fn = _jit("hessian_diagonal")
    assert normwise(_flat(fn(net, params, x, y, loss=loss)), h) <= TOL
    planted = _swap(net, old, new)
    assert normwise(_flat(fn(planted, params, x, y, loss=loss)), h) > 1e-6
