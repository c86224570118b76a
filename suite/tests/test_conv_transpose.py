"""manual.conv.conv_transpose2d beyond the registry: the forward against a plain scatter
loop, its correspondence with conv2d's dX, a small gradient worked by hand, bad input,
planted bugs, and the hypothesis sweep.

The sweep draws configurations from suite.cases.conv_transpose.draw_config (the space the
report's conv_transpose/sweep-k cases sample), builds each with the registry's
``transpose_case`` and judges it with suite.run.run_case: one comparison routine.
"""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import conv
from suite import run
from suite.cases import conv_transpose as cases


def _explain(row):
    return (f"{row.case} {row.dtype}: {row.status}: {row.message}\n"
            f"{row.traceback}")


def naive_conv_transpose2d(x, w, b, stride, padding, output_padding, dilation, groups):
    """torch.nn.functional.conv_transpose2d by its definition, in loops: each input pixel
    scattered through the kernel, the scatter cropped by ``padding`` ((top, bottom),
    (left, right)) and extended by ``output_padding``. Shares no code with manual/."""
    if x.ndim == 3:
        return naive_conv_transpose2d(x[None], w, b, stride, padding, output_padding,
                                      dilation, groups)[0]
    (sh, sw), ((pt, pb), (pl, pr)), (oh, ow), (dh, dw) = stride, padding, output_padding, dilation
    n, c_in, h, wd = x.shape
    _, o_g, kh, kw = w.shape
    ho = (h - 1) * sh - pt - pb + (kh - 1) * dh + oh + 1
    wo = (wd - 1) * sw - pl - pr + (kw - 1) * dw + ow + 1
    c_g = c_in // groups
    y = np.zeros((n, o_g * groups, ho, wo)) + b[None, :, None, None]
    for c in range(c_in):
        g = c // c_g
        for o in range(o_g):
            for i in range(h):
                for j in range(wd):
                    for a in range(kh):
                        for e in range(kw):
                            u, v = i * sh + a * dh - pt, j * sw + e * dw - pl
                            if 0 <= u < ho and 0 <= v < wo:
                                y[:, g * o_g + o, u, v] += x[:, c, i, j] * w[c, o, a, e]
    return y


FORWARD_CONFIGS = [
    # (x shape, w shape, stride, padding argument, its pairs, output_padding, dilation, groups)
    ((2, 3, 4, 5), (3, 2, 3, 3), (1, 1), 0, ((0, 0), (0, 0)), (0, 0), (1, 1), 1),
    ((1, 4, 3, 4), (4, 2, 4, 4), (2, 2), 1, ((1, 1), (1, 1)), (0, 0), (1, 1), 2),
    ((2, 2, 3, 3), (2, 3, 3, 3), (2, 3), (1, 2), ((1, 1), (2, 2)), (1, 2), (1, 1), 1),
    # output_padding >= stride, allowed because it is below the dilation
    ((1, 2, 3, 4), (2, 1, 2, 2), (1, 2), 0, ((0, 0), (0, 0)), (1, 1), (2, 2), 1),
    # padding beyond (k - 1)·d: the crop reaches into the scatter; asymmetric; unbatched
    ((3, 5, 4), (3, 2, 2, 1), (2, 3), (3, 1), ((3, 3), (1, 1)), (1, 0), (1, 1), 1),
    ((2, 2, 4, 3), (2, 3, 3, 2), (2, 2), ((0, 2), (1, 0)), ((0, 2), (1, 0)), (1, 0), (1, 2), 1),
    ((6, 2, 3), (6, 1, 3, 3), (3, 1), (1, 0), ((1, 1), (0, 0)), (2, 0), (1, 1), 3),
]


@pytest.mark.parametrize("xs, ws, s, p, pads, op, d, g", FORWARD_CONFIGS)
def test_forward_matches_the_definition(xs, ws, s, p, pads, op, d, g):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[1] * g)
    forward = jax.jit(functools.partial(conv.conv_transpose2d, stride=s, padding=p,
                                        output_padding=op, dilation=d, groups=g))
    y = forward(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(y, naive_conv_transpose2d(x, w, b, s, pads, op, d, g),
                               rtol=1e-12, atol=1e-12)


# The input, once stride-dilated, narrower than the dilated kernel on at least one axis,
# (n - 1)·s + 1 < (k - 1)·d + 1: manual/conv.py's input_gradient dilates and pads it
# explicitly there (a branch of its own, which no FORWARD_CONFIGS entry and no registry
# case's forward reaches: the registry checks only the backward on it).
NARROW_CONFIGS = [
    ((2, 2, 2, 3), (2, 3, 3, 3), (2, 1), 0, ((0, 0), (0, 0)), (0, 0), (2, 1), 1),
    ((1, 4, 1, 3), (4, 1, 3, 2), (3, 1), (1, 0), ((1, 1), (0, 0)), (2, 0), (1, 2), 2),
    ((3, 2, 2), (3, 2, 4, 2), (1, 2), ((2, 1), (0, 1)), ((2, 1), (0, 1)), (0, 1), (1, 1), 1),
]


@pytest.mark.parametrize("xs, ws, s, p, pads, op, d, g", NARROW_CONFIGS)
def test_forward_on_the_narrow_branch_matches_the_definition(xs, ws, s, p, pads, op, d, g):
    narrow = [(n - 1) * st + 1 < (k - 1) * dl + 1
              for n, st, k, dl in zip(xs[-2:], s, ws[-2:], d, strict=True)]
    assert any(narrow), "the configuration must reach the narrow branch"
    test_forward_matches_the_definition(xs, ws, s, p, pads, op, d, g)


@pytest.mark.parametrize("xs, ws, s, p, pads, op, d, g",
                         [FORWARD_CONFIGS[k] for k in (3, 5, 6)])
def test_forward_is_conv2d_input_gradient_and_the_two_are_adjoint(xs, ws, s, p, pads, op,
                                                                  d, g):
    # The correspondence the derivation rests on, checked two ways: conv_transpose2d(y)
    # is conv2d_backward's dX for a dY of y, on an input of the transposed output's
    # size (y zero-extended by op // s rows where output_padding >= stride: the windows
    # conv2d has there meet no input pixel); and <conv2d(x) - b, y> =
    # <x, conv_transpose2d(y) - b'> (the adjoint).
    rng = np.random.default_rng(1)
    w, y_in = jnp.asarray(rng.normal(size=ws)), jnp.asarray(rng.normal(size=xs))
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    z = jax.jit(functools.partial(conv.conv_transpose2d, output_padding=op, **kw))(
        y_in, w, jnp.zeros(ws[1] * g))
    x, b = jnp.asarray(rng.normal(size=z.shape)), jnp.zeros(ws[0])
    extra = [o // st for o, st in zip(op, s, strict=True)]
    dy = jnp.pad(y_in, [(0, 0)] * (y_in.ndim - 2) + [(0, e) for e in extra])

    @jax.jit
    def both(x, w, b, dy):
        return conv.conv2d_backward(x, w, b, dy, **kw)[0], jnp.vdot(conv.conv2d(x, w, b, **kw), dy)
    dx, forward_dot = both(x, w, b, dy)
    np.testing.assert_allclose(z, dx, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(forward_dot, jnp.vdot(x, z), rtol=1e-12)


def test_gradients_worked_by_hand():
    # x = [[1, 2], [3, 4]], a 2x2 kernel of ones, stride 2: each pixel fills its own 2x2
    # block of the 4x4 output. So dX[i, j] sums dY over block (i, j) and dW[a, b] =
    # Σ_ij x[i, j] dY[2i + a, 2j + b]; with dY = 0..15 row-major, dY[2i + a, 2j + b] =
    # 8i + 4a + 2j + b
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    w, b = jnp.ones((1, 1, 2, 2)), jnp.array([0.5])
    dy = jnp.arange(16.0).reshape(1, 1, 4, 4)

    @functools.partial(jax.jit, static_argnames="output_padding")
    def both(x, w, b, dy, output_padding=0):
        kw = dict(stride=2, output_padding=output_padding)
        return (conv.conv_transpose2d(x, w, b, **kw),
                conv.conv_transpose2d_backward(x, w, b, dy, **kw))
    y, (dx, dw, db) = both(x, w, b, dy)
    np.testing.assert_array_equal(y[0, 0], np.kron([[1, 2], [3, 4]], np.ones((2, 2))) + 0.5)
    blocks = [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]
    np.testing.assert_array_equal(dx[0, 0], blocks)
    x_of = {(0, 0): 1, (0, 1): 2, (1, 0): 3, (1, 1): 4}
    expected_dw = [[sum(x_of[i, j] * (8 * i + 4 * a + 2 * j + c)
                        for i in range(2) for j in range(2)) for c in range(2)]
                   for a in range(2)]
    np.testing.assert_array_equal(dw[0, 0], expected_dw)
    np.testing.assert_array_equal(db, [120])
    # output_padding 1 adds a last row and column that no pixel reaches: y there is b,
    # and their dY reaches nothing
    dy = jnp.zeros((1, 1, 5, 5)).at[0, 0, 4, :].set(7.0).at[0, 0, :, 4].set(7.0)
    y, (dx, dw, db) = both(x, w, b, dy, output_padding=1)
    assert y.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(y[0, 0, 4], np.full(5, 0.5))
    np.testing.assert_array_equal(dx, jnp.zeros_like(x))
    np.testing.assert_array_equal(dw, jnp.zeros_like(w))
    np.testing.assert_array_equal(db, [9 * 7.0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_and_unbatched_shapes_are_preserved(dtype):
    x, w, b = jnp.ones((4, 3, 3), dtype), jnp.ones((4, 1, 3, 3), dtype), jnp.ones(2, dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    y = jax.jit(functools.partial(conv.conv_transpose2d, **kw))(x, w, b)
    assert y.dtype == dtype and y.shape == (2, 6, 6)
    grads = jax.jit(functools.partial(conv.conv_transpose2d_backward, **kw))(
        x, w, b, jnp.ones_like(y))
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]
    assert all(g.dtype == dtype for g in grads)


def _args():
    # x (2, 4, 3, 3), w (4, 3, 2, 2) with groups 2: C_out = 6, y (2, 6, 4, 4) at stride 1
    return dict(x=jnp.ones((2, 4, 3, 3)), w=jnp.ones((4, 3, 2, 2)), b=jnp.ones(6),
                dy=jnp.ones((2, 6, 4, 4)))


GOOD = dict(stride=1, padding=0, output_padding=0, dilation=1, groups=2)

BAD_INPUTS = [
    # (what is changed, pattern)
    (dict(output_padding=1),
     r"output_padding must be smaller than either stride or dilation in each dimension "
     r"\(as torch\), got output_padding \(1, 1\) with stride \(1, 1\) and dilation \(1, 1\)"),
    (dict(stride=(2, 1), dilation=(1, 2), output_padding=(2, 1)),
     r"output_padding must be smaller .* got output_padding \(2, 1\) with stride \(2, 1\) "
     r"and dilation \(1, 2\)"),
    (dict(output_padding=-1), r"output_padding must be >= 0 in each dimension, got -1"),
    (dict(groups=3), r"groups=3 must divide C_in=4, got x \(2, 4, 3, 3\)"),
    (dict(groups=0), r"groups must be a positive int, got 0"),
    (dict(w=jnp.ones((2, 3, 2, 2))),
     r"w must have shape \(C_in, C_out / groups, kh, kw\) with C_in = 4, got x "
     r"\(2, 4, 3, 3\) and w \(2, 3, 2, 2\)"),
    (dict(b=jnp.ones(3)),
     r"b must have shape \(C_out,\) = \(6,\) = \(groups · w.shape\[1\],\) to match w "
     r"\(4, 3, 2, 2\) and groups=2, got \(3,\)"),
    (dict(padding=3),
     r"the output would be empty: .* = \(-2, -2\) for x \(2, 4, 3, 3\), w \(4, 3, 2, 2\)"),
    (dict(padding="same"), r"padding must be an int, a pair of ints or a pair of \(before, "),
    (dict(padding=((0, 1), (-1, 0))), r"padding must be >= 0 on every side"),
    (dict(dy=jnp.ones((2, 6, 4, 5))),
     r"dy must have the shape of y, \(N, C_out, H_out, W_out\) = \(2, 6, 4, 4\), got "
     r"\(2, 6, 4, 5\)"),
    (dict(x=jnp.ones((4, 3, 3)), dy=jnp.ones((2, 6, 4, 4))),
     r"dy must have rank 3, got shape \(2, 6, 4, 4\)"),
    (dict(x=jnp.ones((3, 3))), r"x must have rank 4 \(N, C, H, W\) or 3 \(C, H, W, unbatched\)"),
    (dict(stride=0), r"stride must be >= 1 in each dimension, got 0"),
    (dict(dilation=(1, 0)), r"dilation must be >= 1 in each dimension, got \(1, 0\)"),
    (dict(w=jnp.ones((4, 3, 2, 2), jnp.float32)), r"share one floating dtype, got .*w: float32"),
]


@pytest.mark.parametrize("change, pattern", BAD_INPUTS)
def test_bad_input_is_a_value_error_naming_the_argument(change, pattern):
    args, kw = _args(), dict(GOOD)
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    with pytest.raises(ValueError, match=pattern):
        conv.conv_transpose2d_backward(args["x"], args["w"], args["b"], args["dy"], **kw)
    if "dy" not in change:
        with pytest.raises(ValueError, match=pattern):
            conv.conv_transpose2d(args["x"], args["w"], args["b"], **kw)


def test_bad_input_is_caught_at_trace_time_under_jit():
    a = _args()
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        jax.jit(functools.partial(conv.conv_transpose2d, groups=2, output_padding=1))(
            a["x"], a["w"], a["b"])


# --- planted bugs specific to the derivation --------------------------------------------

def _row_with_backward(label, backward, dtype="float64"):
    config = cases.NAMED_CONFIGS[label]
    case = cases.transpose_case(f"conv_transpose/{label}+planted", config)
    bwd = functools.partial(backward, **config.kwargs)
    grads = type(case.reference(case.build(jax.random.PRNGKey(0), "float64")))

    def manual(inputs):
        return grads(*bwd(inputs["x"], inputs["w"], inputs["b"], inputs["dy"]))
    return run.run_case(dataclasses.replace(case, manual=manual), dtype, timing=False, fd=False)


def _parts(x, w, b, dy, **kw):
    g = conv.transpose_geometry(x, w, b, dy, **kw)
    return g, conv.conv_transpose2d_backward(x, w, b, dy, **kw)


def _dx_with_flipped_kernel(x, w, b, dy, **kw):
    # dX as a true convolution (kernel rotated), where the adjoint of the scatter is a
    # correlation with w as it is
    _, (_, dw, db) = _parts(x, w, b, dy, **kw)
    dx, _, _ = conv.conv_transpose2d_backward(x, w[:, :, ::-1, ::-1], b, dy, **kw)
    return dx, dw, db


def _dw_flipped(x, w, b, dy, **kw):
    # "the kernel gradient of a transposed convolution is the flipped one of a
    # convolution": wrong, the roles of X and dY swap but the taps keep their order
    _, (dx, dw, db) = _parts(x, w, b, dy, **kw)
    return dx, dw[:, :, ::-1, ::-1], db


def _output_padding_rows_cut_first(x, w, b, dy, **kw):
    # the rows of dY past the last window (output_padding of them) cut from the top
    g, (_, dw, db) = _parts(x, w, b, dy, **kw)
    (oh, ow) = g.remainder
    dx = conv.correlate(dy[:, :, oh:, ow:], w, g.replace(padding=tuple(
        (max(0, lo - r), max(0, hi)) for (lo, hi), r in zip(g.padding, g.remainder,
                                                              strict=True))))
    return dx[:, :, :x.shape[2], :x.shape[3]], dw, db


def _groups_ignored_in_dw(x, w, b, dy, **kw):
    # dW per group: the channel blocks of dY and X matched in the wrong order
    g, (dx, _, db) = _parts(x, w, b, dy, **kw)
    c_out = dy.shape[1]
    rolled = jnp.roll(dy, c_out // g.groups, axis=1)
    return dx, conv.weight_gradient(rolled, x, g), db


@pytest.mark.parametrize("label, bug, leaf", [
    ("decoder-s2", _dx_with_flipped_kernel, ".dx"),
    ("decoder-s2", _dw_flipped, ".dw"),
    ("output-padding-dilation", _output_padding_rows_cut_first, ".dx"),
    ("depthwise", _groups_ignored_in_dw, ".dw"),
])
def test_planted_bug_fails(label, bug, leaf):
    row = _row_with_backward(label, bug)
    assert row.status == "FAIL" and leaf in row.message, _explain(row)


def test_the_planting_harness_passes_the_truth():
    for label in ("output-padding-dilation", "depthwise"):
        row = _row_with_backward(label, conv.conv_transpose2d_backward)
        assert row.status == "PASS", _explain(row)


# --- the hypothesis sweep ---------------------------------------------------------------

@st.composite
def configs(draw):
    return cases.draw_config(lambda lo, hi: draw(st.integers(lo, hi)))


def _sweep_one(config, witness):
    case = cases.transpose_case("conv_transpose/hypothesis", config)
    for dtype in ("float32", "float64"):
        row = run.run_case(case, dtype, timing=False, fd=witness)
        assert row.status == "PASS", f"{config}\n{_explain(row)}"


@pytest.mark.parametrize("tier", [
    "test", pytest.param("slow", marks=pytest.mark.slow)])
def test_sweep(tier):
    @hypothesis.settings(max_examples=cases.SWEEP_EXAMPLES[tier])
    @hypothesis.given(config=configs(), witness=st.integers(0, 3))
    def check(config, witness):
        # the finite-difference witness on a quarter of the draws in the slow tier only;
        # the registered cases carry it in every run
        _sweep_one(config, witness=tier == "slow" and witness == 0)
    check()
