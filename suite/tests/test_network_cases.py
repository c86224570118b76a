"""The network family beyond the generic registry test: the oracle's own forward against
the layers of manual/, the kink-free draws, and planted derivation bugs through run_case.

The registry's rows (test_registry.py) compare manual.network with reference.network.
Here: (1) reference.network's plain-jnp layers compute what manual/'s forwards compute
(the same conventions: NCHW, OIHW, torch's pooling pads, the heads' split), so the oracle
differentiates the function the manual code claims to; (2) the draws keep ReLUs and
max-pool windows off their kinks and ties; (3) each plausible slip in a layer's
second-order rule — f'' forgotten, the conv's transpose taken with the kernel unflipped,
the layer norm's dense per-row term dropped, a residual block's cross terms dropped —
turns the row into a FAIL. Each slip is a subclass of the layer that
overrides one public rule (``second_order``, ``pullback``, ``join_columns``), handed to the
manual side only; the oracle keeps the true net.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import attention, conv, layernorm, network, pool
from reference import network as oracle
from suite import cases as registry
from suite import run
from suite.cases import network as network_cases
from suite.cases.common import numpy_rng

SLOW = pytest.mark.slow


def _normal(rng, shape):
    return jnp.asarray(rng.normal(size=shape))


@pytest.mark.parametrize("options", [dict(), dict(stride=2, padding=1), dict(dilation=2),
                                     dict(groups=2, padding=(1, 2)), dict(padding="same")])
def test_oracle_conv_is_manual_conv2d(options):
    rng = np.random.default_rng(0)
    x, w, b = _normal(rng, (2, 4, 7, 6)), _normal(rng, (6, 4 // options.get("groups", 1), 3, 2)), \
        _normal(rng, (6,))
    got = oracle.layer_forward(network.Conv2d(**options), (w, b), x)
    np.testing.assert_allclose(got, conv.conv2d(x, w, b, **options), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("window, options", [(2, dict()), (3, dict(stride=2, padding=1)),
                                             (3, dict(stride=1))])
def test_oracle_pools_are_manual_pools(window, options):
    x = _normal(np.random.default_rng(1), (2, 3, 7, 7))
    got_max = oracle.layer_forward(network.MaxPool2d(window, **options), (), x)
    got_avg = oracle.layer_forward(network.AvgPool2d(window, **options), (), x)
    np.testing.assert_allclose(got_max, pool.max_pool2d(x, window=window, **options), rtol=1e-14)
    np.testing.assert_allclose(got_avg, pool.avg_pool2d(x, window=window, **options), rtol=1e-13,
                               atol=1e-14)


def test_oracle_layernorm_and_attention_are_manual_ones():
    rng = np.random.default_rng(2)
    x, gamma, beta = _normal(rng, (2, 5, 6)), _normal(rng, (6,)), _normal(rng, (6,))
    np.testing.assert_allclose(oracle.layer_forward(network.LayerNorm(eps=1e-3), (gamma, beta), x),
                               layernorm.forward(x, gamma, beta, eps=1e-3), rtol=1e-13,
                               atol=1e-13)
    params = {k: _normal(rng, (6, 6)) for k in ("w_k", "w_o", "w_q", "w_v")}
    for causal in (False, True):
        np.testing.assert_allclose(
            oracle.layer_forward(network.SelfAttention(3, causal=causal), params, x),
            attention.mha_forward(params, x, heads=3, causal=causal), rtol=1e-12, atol=1e-13)


def test_oracle_stack_is_manual_forward():
    spec, shape, loss = network_cases.NETS["resnet"]
    i = network_cases.network_inputs(jax.random.PRNGKey(0), spec, shape, "float64", loss=loss,
                                     margin=None)
    net = network_cases.make_net(spec)
    np.testing.assert_allclose(oracle.forward(net, i["params"], i["x"]),
                               network.forward(net, i["params"], i["x"]), rtol=1e-13, atol=1e-13)
    assert oracle.layer_sizes(net, i["params"]) == [3 * 4 * 9 + 4, 4 * 4 * 9 + 4,
                                                    4 * 4 * 9 + 4, 4 * 3 + 3]


def test_oracle_reads_only_names_and_settings():
    # a description the oracle has never seen (no manual.network class) still works
    class Linear:
        pass

    class Act:
        activation = "softplus"

    x = jnp.array([[1.0, -2.0]])
    params = ((jnp.eye(2), jnp.zeros(2)), ())
    np.testing.assert_allclose(oracle.forward((Linear(), Act()), params, x),
                               jnp.logaddexp(x, 0.0), rtol=1e-15)
    with pytest.raises(ValueError, match="unknown layer type 'Dropout'"):
        oracle.layer_forward(type("Dropout", (), {})(), (), x)


@SLOW
def test_draws_keep_kinks_and_ties_at_a_margin():
    for label in ("cnn", "resnet", "pool-options"):
        spec, shape, loss = network_cases.NETS[label]
        i = network_cases.network_inputs(jax.random.PRNGKey(3), spec, shape, "float64",
                                         loss=loss)
        margin = network_cases.kink_margin(network_cases.make_net(spec), i["params"], i["x"])
        assert margin >= network_cases.MARGIN, (label, margin)


def test_kink_margin_sees_a_max_pool_tie_but_not_relu_zeros():
    # two equal maxima in one window: the margin is 0; a window of a ReLU's zeros is no tie
    x = jnp.asarray(numpy_rng(jax.random.PRNGKey(0)).normal(size=(1, 1, 2, 2)))
    tie = x.at[0, 0, 0, 1].set(x.max()).at[0, 0, 1, 1].set(x.max())
    assert network_cases.kink_margin((network.MaxPool2d(2),), ((),), tie) == 0.0
    zeros = jnp.asarray([[[[0.5, -0.7], [-0.6, -0.8]], [[-0.5, -0.7], [-0.6, -0.8]]]])
    net = (network.Act("relu"), network.MaxPool2d(2))
    assert network_cases.kink_margin(net, ((), ()), zeros) == 0.5


def test_every_function_and_every_net_is_registered():
    names = [c.name for c in registry.cases(family="network", tiers=None)]
    for kind in network_cases.KINDS:
        for label in network_cases.NETS:
            assert any(n.startswith(f"network/{kind}/{label}-") for n in names), (kind, label)


# --- planted derivation bugs ------------------------------------------------------------
# Each is a layer of manual.network with one rule broken (a subclass overriding it); the
# planted case hands the broken net to the manual side only (network_case's manual_net).

class _NoCurvatureAct(network.Act):
    """Act's T_xx = diag(δ ⊙ f''(z)) forgotten: only the Gauss-Newton part reaches below."""

    def second_order(self, p, state, dy):
        return None

    def second_order_diagonal(self, p, state, dy):  # the same term, as a diagonal
        return None


class _UnflippedConv(network.Conv2d):
    """The columns pulled through J_xᵀ with the kernel as it is, where the transpose
    correlates with it flipped (the parameter gradients stay right)."""

    def pullback(self, p, x, c):
        w, b = p
        return super().pullback((w[:, :, ::-1, ::-1], b), x, c)[0], super().pullback(p, x, c)[1]


class _NoRowTermLayerNorm(network.LayerNorm):
    """The layer norm's dense per-row second-order term dropped."""

    def second_order(self, p, state, dy):
        return None


class _NoCrossResidual(network.Residual):
    """Ω_x = Ω_y + J_fᵀ Ω_y J_f + T_f: the skip's and the branch's columns kept apart, so
    the cross terms J_fᵀ Ω_y + Ω_y J_f are dropped."""

    def join_columns(self, skip, branch, w_skip, w_branch):
        return (jnp.concatenate([skip, branch], axis=1),
                jnp.concatenate([w_skip, w_branch], axis=1))


def _swap(net, old, new):
    """``net`` with every layer of type ``old`` (depth first) re-classed as ``new``."""
    out = []
    for layer in net:
        inner = _swap(layer.layers, old, new) if isinstance(layer, network.Residual) else None
        if type(layer) is old:
            planted = copy.copy(layer)
            planted.__class__ = new
            if inner is not None:
                planted.layers = inner
            out.append(planted)
        elif inner is not None:
            out.append(network.Residual(*inner))
        else:
            out.append(layer)
    return tuple(out)


def _planted_row(kind, label, old, new, dtype="float64"):
    spec, shape, loss = network_cases.NETS[label]
    planted = _swap(network_cases.make_net(spec), old, new)
    case = network_cases.network_case(kind, label, spec, shape, loss, tier="test",
                                      manual_net=planted)
    return run.run_case(dataclasses.replace(case, name=case.name + "+planted"), dtype,
                        timing=False, fd=False)


def _explain(row):
    return f"{row.case}: {row.status}: {row.message}\n{row.traceback}"


def test_planted_missing_f_second_derivative_fails():
    row = _planted_row("diagonal", "mlp", network.Act, _NoCurvatureAct)
    assert row.status == "FAIL", _explain(row)


@SLOW
def test_the_planting_harness_passes_the_truth():
    # the same path with a layer re-classed as itself: the swap alone breaks nothing
    row = _planted_row("diagonal", "mlp", network.Act, network.Act)
    assert row.status == "PASS", _explain(row)


@SLOW
@pytest.mark.parametrize("kind, label, old, new", [
    ("diagonal", "cnn", network.Conv2d, _UnflippedConv),
    ("diagonal", "transformer-causal", network.LayerNorm, _NoRowTermLayerNorm),
    ("diagonal", "resnet", network.Residual, _NoCrossResidual),
    ("blocks", "resnet", network.Residual, _NoCrossResidual),
    ("diagonal", "cnn", network.Act, _NoCurvatureAct),
])
def test_planted_derivation_bug_fails(kind, label, old, new):
    row = _planted_row(kind, label, old, new)
    assert row.status == "FAIL", _explain(row)
