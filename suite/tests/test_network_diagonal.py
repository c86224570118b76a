"""The diagonal's cheaper forms in manual.network, each against jax.hessian of the
independent plain forward (test_network.py), with a planted bug that FAILs; and the
eigendecomposition-free factors they rest on (Loss.hessian_columns, whose default is the
signed columns that also compress Ω)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from manual import losses
from manual import network as nw
from suite.tests.test_network import TOL, plain_loss

# Each net takes one path of the diagonal that the registry's nets do not:
NETS = {
    # Conv2d with more output units than twice its input (U = 54 > 2·9): J_xᵀ diag(s) J_x
    # formed per sample and written as signed columns
    "conv-widening": ((nw.Conv2d(padding=1), nw.Act("tanh"), nw.Flatten(), nw.Linear()),
                      (3, 1, 3, 3), ((6, 3), None, None, 3)),
    # Linear over rows with M > 2D: the per-row D x D blocks as signed columns
    "rows-widening": ((nw.Linear(), nw.Act("tanh"), nw.MeanOverTime(), nw.Linear()),
                      (2, 3, 2), (5, None, None, 3)),
    # the channel blocks (L = 16 < K = 27 columns) through average pooling, with an f''
    # term inside the run
    "blocks-avgpool": ((nw.Conv2d(padding=1), nw.Act("sigmoid"), nw.AvgPool2d(2),
                        nw.Conv2d(padding=1), nw.Act("tanh"), nw.Flatten(), nw.Linear()),
                       (2, 2, 4, 4), ((3, 3), None, None, (6, 3), None, None, 3)),
}


def _problem(label):
    net, shape, sizes = NETS[label]
    keys = jax.random.split(jax.random.PRNGKey(11), 3)
    params = nw.init(net, keys[0], shape, sizes, dtype=jnp.float64)
    x = jax.random.normal(keys[1], shape, jnp.float64)
    y = jax.random.randint(keys[2], (shape[0],), 0, 3)
    return net, params, x, y


@functools.cache
def _reference(label):
    """diag H by jax.hessian of the plain forward, compiled once per net."""
    net, params, x, y = _problem(label)
    flat, unravel = ravel_pytree(params)
    return jax.jit(lambda f: jnp.diagonal(jax.hessian(
        lambda g: plain_loss(net, unravel(g), x, y, "softmax_cross_entropy"))(f)))(flat)


def _error(label, manual_net):
    """normwise |diag H - manual| / |diag H|, manual.network compiled (net static)."""
    _, params, x, y = _problem(label)
    loss = "softmax_cross_entropy"
    ref = _reference(label)
    mine = jax.jit(lambda p: ravel_pytree(nw.hessian_diagonal(manual_net, p, x, y,
                                                              loss=loss))[0])(params)
    return float(jnp.linalg.norm(mine - ref) / jnp.linalg.norm(ref))


@pytest.mark.parametrize("label", sorted(NETS))
def test_diagonal_paths_match_autodiff(label):
    assert _error(label, NETS[label][0]) <= TOL


class _NoSharedColumns(nw.Conv2d):
    """Jᵀ diag(s) J not passed down: the f'' term reaches only the layer under it."""

    def pull_diagonal(self, p, x, s):
        return None, None


class _BlocksUnmasked(nw.Act):
    """The channel blocks carried through an activation without its slope."""

    def pull_blocks(self, p, state, b):
        return b


@pytest.mark.parametrize("label, index, bug", [
    ("blocks-avgpool", 3, _NoSharedColumns), ("blocks-avgpool", 1, _BlocksUnmasked)])
def test_planted_diagonal_bug_fails(label, index, bug):
    net = NETS[label][0]
    broken = list(net)
    broken[index] = bug.__new__(bug)
    broken[index].__dict__.update(net[index].__dict__)
    assert _error(label, tuple(broken)) > 1e-3


def _gram(c, w):
    flat = c.reshape(c.shape[:2] + (-1,))
    return np.einsum("nki,nk,nkj->nij", flat, w, flat)


def test_signed_columns_are_the_matrix():
    """A Loss without its own factor gets the 2M signed columns of its Hessian, here an
    indefinite one with a zero row (whose columns cancel exactly)."""
    a = np.random.default_rng(0).normal(size=(3, 6, 6))
    omega = a + a.transpose(0, 2, 1)
    omega[1, 2, :] = omega[1, :, 2] = 0.0
    indefinite = losses.Loss("indefinite", lambda z, y: jnp.sum(z), lambda z, y: z,
                             lambda z, y: jnp.asarray(omega))
    c, w = indefinite.hessian_columns(jnp.zeros((3, 6)), jnp.zeros((3, 6)))
    assert c.shape == (3, 12, 6) and w.shape == (3, 12)
    assert np.abs(_gram(c, w) - omega).max() <= 1e-14 * np.abs(omega).max()
    # planted: the minus half dropped is not Ω
    assert np.abs(_gram(c[:, :6], w[:, :6]) - omega).max() > 0.1


@pytest.mark.parametrize("loss, y", [
    (losses.softmax_cross_entropy, np.array([0, 2])),
    (losses.mse, np.ones((2, 3))),
    (losses.Loss("quartic", lambda z, y: jnp.sum(z ** 4) / z.shape[0],
                 lambda z, y: 4 * z ** 3 / z.shape[0],
                 lambda z, y: jax.vmap(jnp.diag)(12 * z ** 2)), np.zeros((2, 3)))])
def test_loss_hessian_columns_are_its_hessian(loss, y):
    z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)))
    c, w = loss.hessian_columns(z, jnp.asarray(y))
    assert np.abs(_gram(c, w) - loss.hessian(z, jnp.asarray(y))).max() <= 1e-14


# --- the Hessian of a piecewise-linear stack: G + A + Aᵀ --------------------------------

RELU_RESNET = ((nw.Conv2d(padding=1), nw.Act("relu"),
                nw.Residual(nw.Conv2d(padding=1), nw.Act("relu"), nw.Conv2d(padding=1)),
                nw.Act("relu"), nw.MaxPool2d(2), nw.Flatten(), nw.Linear()),
               (3, 2, 4, 4), ((3, 3), None, ((3, 3), None, (3, 3)), None, None, None, 3))


class _NoMixedConv(nw.Conv2d):
    """The mixed term T_θx ẋ dropped: the Hessian is the Gauss-Newton matrix only."""

    def mixed(self, p, x, dy, xdot):
        return jnp.zeros_like(p[0]), jnp.zeros_like(p[1])


@functools.cache
def _relu_resnet():
    net, shape, sizes = RELU_RESNET
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    params = nw.init(net, keys[0], shape, sizes, dtype=jnp.float64)
    x = jax.random.normal(keys[1], shape, jnp.float64)
    y = jax.random.randint(keys[2], (shape[0],), 0, 3)
    flat, unravel = ravel_pytree(params)
    ref = jax.jit(jax.hessian(lambda f: plain_loss(net, unravel(f), x, y,
                                                   "softmax_cross_entropy")))(flat)
    return params, x, y, ref


@pytest.mark.parametrize("planted", [False, True])
def test_piecewise_linear_hessian_matches_autodiff(planted):
    net = RELU_RESNET[0]
    assert all(layer.piecewise_linear for layer in net)
    if planted:
        bug = _NoMixedConv.__new__(_NoMixedConv)
        bug.__dict__.update(net[0].__dict__)
        net = (net[0], net[1], nw.Residual(bug, *net[2].layers[1:])) + net[3:]
    params, x, y, ref = _relu_resnet()
    mine = jax.jit(lambda p: nw.hessian(net, p, x, y, loss="softmax_cross_entropy"))(params)
    error = float(jnp.linalg.norm(mine - ref) / jnp.linalg.norm(ref))
    assert error > 1e-3 if planted else error <= TOL
