"""manual.conv and manual.im2col beyond the registry: the forward against a plain loop,
small gradients worked by hand, bad input, planted bugs, and the hypothesis sweep.

The sweep draws configurations from suite.cases.conv.draw_config (the same space the
report's conv/sweep-k cases sample), builds each with the registry's constructor
``conv_case`` and judges it with suite.run.run_case: one comparison routine.
"""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from manual import conv, im2col, windows
from suite import run
from suite.cases import conv as conv_cases

FORWARDS = {"lax": conv.conv2d, "im2col": im2col.conv2d_im2col}
BACKWARDS = {"lax": conv.conv2d_backward, "im2col": im2col.conv2d_im2col_backward}


def _explain(row):
    return f"{row.case} {row.dtype}: {row.status}: {row.message}\n{row.traceback}"


def naive_conv2d(x, w, b, stride, padding, dilation, groups):
    """torch.nn.functional.conv2d by its definition, in loops (shares no code with manual/).

    ``padding`` is ((top, bottom), (left, right)); an unbatched x (C, H, W) gives an
    unbatched y.
    """
    if x.ndim == 3:
        return naive_conv2d(x[None], w, b, stride, padding, dilation, groups)[0]
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    n, c_in, h, wd = x.shape
    c_out, c_g, kh, kw = w.shape
    xp = np.zeros((n, c_in, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (wd + pl + pr - (kw - 1) * dw - 1) // sw + 1
    o_g = c_out // groups
    y = np.zeros((n, c_out, ho, wo))
    for o in range(c_out):
        g = o // o_g
        for i in range(ho):
            for j in range(wo):
                acc = np.full(n, b[o])
                for c in range(c_g):
                    for a in range(kh):
                        for e in range(kw):
                            acc += (xp[:, g * c_g + c, i * sh + a * dh, j * sw + e * dw]
                                    * w[o, c, a, e])
                y[:, o, i, j] = acc
    return y


FORWARD_CONFIGS = [
    # (x shape, w shape, stride, padding argument, the padding it means, dilation, groups)
    ((2, 3, 6, 5), (4, 3, 3, 2), (1, 1), (0, 0), ((0, 0), (0, 0)), (1, 1), 1),
    ((1, 4, 7, 8), (6, 2, 2, 3), (2, 3), (1, 2), ((1, 1), (2, 2)), (2, 1), 2),
    ((2, 3, 5, 5), (3, 1, 3, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    ((1, 2, 4, 6), (2, 2, 1, 1), (2, 2), (2, 1), ((2, 2), (1, 1)), (1, 1), 1),
    ((1, 1, 3, 3), (1, 1, 5, 5), (1, 1), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    # asymmetric pairs, a crop-deep bottom pad, unbatched
    ((2, 2, 5, 6), (3, 2, 2, 3), (2, 1), ((0, 3), (2, 1)), ((0, 3), (2, 1)), (1, 2), 1),
    ((4, 6, 5), (2, 2, 3, 2), (1, 2), ((1, 0), (0, 2)), ((1, 0), (0, 2)), (2, 1), 2),
    # "same": total (k - 1)·d = 3 and 2 per axis, the odd extra row after; torch's
    # example in the docs of F.conv2d (even kernel) and a dilated 3x3, unbatched
    ((1, 2, 5, 4), (2, 2, 4, 3), (1, 1), "same", ((1, 2), (1, 1)), (1, 1), 1),
    ((3, 4, 4), (2, 3, 3, 3), (1, 1), "same", ((2, 2), (1, 1)), (2, 1), 1),
    ((2, 3, 6, 7), (2, 3, 3, 2), (2, 3), "valid", ((0, 0), (0, 0)), (1, 1), 1),
]


@pytest.mark.parametrize("impl", ["lax", "im2col"])
@pytest.mark.parametrize("xs, ws, s, p, pads, d, g", FORWARD_CONFIGS)
def test_forward_matches_the_definition(impl, xs, ws, s, p, pads, d, g):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])
    forward = jax.jit(functools.partial(FORWARDS[impl], stride=s, padding=p, dilation=d,
                                        groups=g))
    y = forward(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, s, pads, d, g), rtol=1e-12,
                               atol=1e-12)


def test_same_padding_keeps_the_size_and_resolves_as_torch():
    # torch pads (k - 1)·d // 2 before and the rest after; the case module's oracle pads
    # the same way by its own rule (suite.cases.conv.resolve_padding)
    x, b = jnp.ones((1, 1, 5, 6)), jnp.zeros(1)
    for kernel, dilation, pads in (((2, 2), (1, 1), ((0, 1), (0, 1))),
                                   ((3, 4), (2, 1), ((2, 2), (1, 2)))):
        g = conv.geometry(x, jnp.ones((1, 1) + kernel), b, padding="same", dilation=dilation)
        assert g.padding == pads and g.out == (5, 6)
        assert conv_cases.resolve_padding("same", kernel, dilation) == pads


@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_gradients_worked_by_hand(impl):
    def backward(x, w, b, dy, **kw):
        return jax.jit(functools.partial(BACKWARDS[impl], **kw))(x, w, b, dy)
    # all-ones 3x3 image, 2x2 kernel, dY = 1: dX counts the windows covering each
    # pixel, dW sums the 4 pixels each tap meets, db counts the outputs
    x, w, b = jnp.ones((1, 1, 3, 3)), jnp.ones((1, 1, 2, 2)), jnp.zeros(1)
    dx, dw, db = backward(x, w, b, jnp.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    np.testing.assert_array_equal(dw[0, 0], [[4, 4], [4, 4]])
    np.testing.assert_array_equal(db, [4])
    # stride 3 on a 4x4 image: one window at the top left; the rest is lost to the
    # stride and gets no gradient. w = [[1, 2], [3, 4]] lands unflipped on the pixels.
    x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    dx, dw, db = backward(x, w, jnp.zeros(1), jnp.full((1, 1, 1, 1), 2.0), stride=3)
    expected = np.zeros((4, 4))
    expected[:2, :2] = [[2, 4], [6, 8]]
    np.testing.assert_array_equal(dx[0, 0], expected)
    np.testing.assert_array_equal(dw[0, 0], [[0, 2], [8, 10]])
    # dilation 2, padding 1: the taps of a 2x2 kernel sit two apart; on a 2x2 image
    # padded to 4x4, output (i, j) reads padded (i + 2a, j + 2b), so tap (a, b) meets
    # image pixel (i + 2a - 1, j + 2b - 1) when it exists: exactly one (i, j) per tap,
    # the one that puts tap (a, b) on pixel (a, b); and each pixel meets one tap
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    dx, dw, db = backward(x, jnp.ones((1, 1, 2, 2)), jnp.zeros(1), jnp.ones((1, 1, 2, 2)),
                          padding=1, dilation=2)
    np.testing.assert_array_equal(dw[0, 0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(dx[0, 0], [[1, 1], [1, 1]])
    # "same" with a 2x2 kernel on an all-ones 3x3 image: padded (0, 1) per axis to 4x4,
    # 3x3 outputs. Pixel u is in windows u - 1 and u (those that exist): 1, 2, 2 per axis;
    # tap 0 meets rows 0..2 (3 real), tap 1 rows 1..3 (2 real, then the pad)
    x = jnp.ones((1, 3, 3))  # unbatched
    dx, dw, db = backward(x, jnp.ones((1, 1, 2, 2)), jnp.zeros(1), jnp.ones((1, 3, 3)),
                          padding="same")
    np.testing.assert_array_equal(dx[0], [[1, 2, 2], [2, 4, 4], [2, 4, 4]])
    np.testing.assert_array_equal(dw[0, 0], [[9, 6], [6, 4]])
    np.testing.assert_array_equal(db, [9])
    # asymmetric padding ((2, 0), (0, 0)), 1x1 kernel, stride 2 on a 3x1 column: padded
    # rows 0, 1 are zeros, outputs read padded rows 0, 2, 4 = zero, x0, x2; x1 lies
    # between two windows and gets nothing
    x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 1, 3, 1)
    dx, dw, db = backward(x, jnp.full((1, 1, 1, 1), 5.0), jnp.zeros(1),
                          jnp.array([1.0, 10.0, 100.0]).reshape(1, 1, 3, 1), stride=(2, 1),
                          padding=((2, 0), (0, 0)))
    np.testing.assert_array_equal(dx[0, 0, :, 0], [50, 0, 500])
    np.testing.assert_array_equal(dw[0, 0], [[10 * 1 + 100 * 3]])


@pytest.mark.parametrize("impl", ["lax", "im2col"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_dtype_is_preserved(impl, dtype):
    x, w, b = jnp.ones((1, 2, 5, 5), dtype), jnp.ones((4, 1, 3, 3), dtype), jnp.ones(4, dtype)
    kw = dict(stride=2, padding=1, dilation=1, groups=2)
    y = jax.jit(functools.partial(FORWARDS[impl], **kw))(x, w, b)
    assert y.dtype == dtype
    grads = jax.jit(functools.partial(BACKWARDS[impl], **kw))(x, w, b, jnp.ones_like(y))
    assert all(g.dtype == dtype for g in grads)


def _args():
    return dict(x=jnp.ones((2, 4, 6, 5)), w=jnp.ones((6, 2, 3, 3)), b=jnp.ones(6),
                dy=jnp.ones((2, 6, 4, 3)))


GOOD = dict(stride=1, padding=0, dilation=1, groups=2)

BAD_INPUTS = [
    # (what is changed, pattern)
    (dict(groups=3),
     r"groups=3 must divide both channel counts, got x \(2, 4, 6, 5\) \(C_in=4\) and w \(6, 2, 3, "
     r"3\)"),
    (dict(groups=1),
     r"w must have shape \(C_out, C_in / groups, kh, kw\) with C_in / groups = 4, got x \(2, 4, "
     r"6, 5\), w \(6, 2, 3, 3\)"),
    (dict(groups=0), r"groups must be a positive int, got 0"),
    (dict(w=jnp.ones((6, 2, 9, 3))),
     r"dilated kernel \(9, 3\) .* larger than the padded input \(6, 5\) \(x \(2, 4, 6, 5\), "
     r"padding \(0, 0\)\)"),
    (dict(dilation=3), r"dilated kernel \(7, 7\) .*larger than the padded input \(6, 5\)"),
    (dict(x=jnp.ones((6, 5))),
     r"x must have rank 4 \(N, C, H, W\) or 3 \(C, H, W, unbatched\), got shape \(6, 5\)"),
    (dict(x=jnp.ones((1, 2, 4, 6, 5))), r"x must have rank 4 .* got shape \(1, 2, 4, 6, 5\)"),
    (dict(x=jnp.ones((4, 6, 5)), dy=jnp.ones((2, 6, 4, 3))),
     r"dy must have rank 3, got shape \(2, 6, 4, 3\)"),
    (dict(w=jnp.ones((6, 2, 3))), r"w must have rank 4, got shape \(6, 2, 3\)"),
    (dict(b=jnp.ones((6, 1))), r"b must have rank 1, got shape \(6, 1\)"),
    (dict(dy=jnp.ones((2, 6, 4))), r"dy must have rank 4, got shape \(2, 6, 4\)"),
    (dict(b=jnp.ones(5)),
     r"b must have shape \(C_out,\) = \(6,\) to match w \(6, 2, 3, 3\), got \(5,\)"),
    (dict(dy=jnp.ones((2, 6, 4, 4))),
     r"dy must have the shape of y, \(N, C_out, H_out, W_out\) = \(2, 6, 4, 3\), got \(2, 6, 4, "
     r"4\)"),
    (dict(stride=0), r"stride must be >= 1 in each dimension, got 0"),
    (dict(stride=(1, -2)), r"stride must be >= 1 in each dimension, got \(1, -2\)"),
    (dict(dilation=0), r"dilation must be >= 1 in each dimension, got 0"),
    (dict(dilation=(-1, 1)), r"dilation must be >= 1 in each dimension, got \(-1, 1\)"),
    (dict(padding=-1), r"padding must be >= 0 in each dimension, got -1"),
    (dict(padding=(0, -2)), r"padding must be >= 0 in each dimension, got \(0, -2\)"),
    (dict(stride=1.5), r"stride must be an int or a pair of ints, got 1.5"),
    (dict(padding=(1, 1, 1)),
     r"padding must be an int, a pair of ints or a pair of \(before, after\) pairs of ints, each "
     r">= 0, got \(1, 1, 1\)"),
    (dict(padding=((0, 1), (2, -1))),
     r"padding must be >= 0 on every side, got \(\(0, 1\), \(2, -1\)\)"),
    (dict(padding=((0, 1), 2)), r"padding must be an int, a pair .* got \(\(0, 1\), 2\)"),
    (dict(padding="full"),
     r"padding must be an int, a pair, a pair of \(before, after\) pairs, 'same' or 'valid', got "
     r"'full'"),
    (dict(padding="same", stride=(1, 2)), r"padding='same' needs stride 1 .*got stride \(1, 2\)"),
    (dict(stride=True), r"stride must be an int or a pair of ints, got True"),
    (dict(x=jnp.ones((2, 4, 6, 5), jnp.int32)),
     r"x must be a floating-point array, got shape \(2, 4, 6, 5\) and dtype int32"),
    (dict(w=jnp.ones((6, 2, 3, 3), jnp.float32)), r"share one floating dtype, got .*w: float32"),
]


@pytest.mark.parametrize("impl", ["lax", "im2col"])
@pytest.mark.parametrize("change, pattern", BAD_INPUTS)
def test_bad_input_is_a_value_error_naming_the_argument(impl, change, pattern):
    args, kw = _args(), dict(GOOD)
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    with pytest.raises(ValueError, match=pattern):
        BACKWARDS[impl](args["x"], args["w"], args["b"], args["dy"], **kw)
    if "dy" not in change:
        with pytest.raises(ValueError, match=pattern):
            FORWARDS[impl](args["x"], args["w"], args["b"], **kw)


def test_bad_input_is_caught_at_trace_time_under_jit():
    a = _args()
    backward = jax.jit(functools.partial(conv.conv2d_backward, **GOOD))
    with pytest.raises(ValueError, match="dy must have the shape of y"):
        backward(a["x"], a["w"], a["b"], a["dy"][:, :, :2])
    with pytest.raises(ValueError, match="groups=3 must divide"):
        jax.jit(functools.partial(conv.conv2d, groups=3))(a["x"], a["w"], a["b"])


# --- planted bugs specific to the derivation --------------------------------------------

def _row_with_backward(label, backward, dtype="float64"):
    config = conv_cases.NAMED_CONFIGS[label]
    case = conv_cases.conv_case(f"conv/{label}+planted", config)
    bwd = functools.partial(backward, **config.kwargs)
    grads = type(case.reference(case.build(jax.random.PRNGKey(0), "float64")))
    def manual(inputs):
        return grads(*bwd(inputs["x"], inputs["w"], inputs["b"], inputs["dy"]))
    return run.run_case(dataclasses.replace(case, manual=manual), dtype, timing=False, fd=False)


def _unflipped_kernel(x, w, b, dy, **kw):
    # dX with the kernel used as it is: correlating where the derivation convolves
    dx, dw, db = conv.conv2d_backward(x, w[:, :, ::-1, ::-1], b, dy, **kw)
    return dx, conv.conv2d_backward(x, w, b, dy, **kw)[1], db


def _remainder_forgotten(x, w, b, dy, **kw):
    g = conv.geometry(x, w, b, dy, **kw)
    dx = conv.input_gradient(dy, w, g.replace(remainder=(0, 0)))
    return dx, conv.weight_gradient(x, dy, g), dy.sum(axis=(0, 2, 3))


def _same_extra_row_before(x, w, b, dy, **kw):
    # "same" with the odd extra row of padding put before instead of after
    g = conv.geometry(x, w, b, dy, **kw)
    g = g.replace(padding=tuple((hi, lo) for lo, hi in g.padding))
    return conv.input_gradient(dy, w, g), conv.weight_gradient(x, dy, g), dy.sum(axis=(0, 2, 3))


def _asymmetric_crops_swapped(x, w, b, dy, **kw):
    # dX̃ cropped as if the padding were symmetric with the larger side: the rows of
    # the top pad taken for those of the bottom (unbatched input)
    g = conv.geometry(x, w, b, dy, **kw)
    sym = g.replace(padding=tuple((max(p), max(p)) for p in g.padding))
    dx = conv.input_gradient(dy[None], w, sym)
    (top, _), (left, _) = g.padding
    (tt, _), (ll, _) = sym.padding
    h, wd = x.shape[1:]
    dx = dx[0, :, tt - top:tt - top + h, ll - left:ll - left + wd]
    return dx, conv.weight_gradient(x[None], dy[None], g), dy.sum(axis=(1, 2))


def _groups_ignored_in_transpose(x, w, b, dy, **kw):
    # swap in/out channels of the whole kernel instead of per group
    g = conv.geometry(x, w, b, dy, **kw)
    c_out, c_g, kh, kw_ = w.shape
    w_t = w.reshape(c_out // g.groups, g.groups * c_g, kh, kw_)[:, :, ::-1, ::-1]
    pad = [((k - 1) * d - lo, (k - 1) * d - hi + r) for k, d, (lo, hi), r
           in zip(g.kernel, g.dilation, g.padding, g.remainder, strict=True)]
    dx = lax.conv_general_dilated(dy, w_t, (1, 1), pad, lhs_dilation=g.stride,
                                  rhs_dilation=g.dilation,
                                  dimension_numbers=("NCHW", "IOHW", "NCHW"),
                                  feature_group_count=g.groups, precision=conv.HIGHEST)
    return dx, conv.weight_gradient(x, dy, g), dy.sum(axis=(0, 2, 3))


def _db_mean(x, w, b, dy, **kw):
    dx, dw, _ = conv.conv2d_backward(x, w, b, dy, **kw)
    return dx, dw, dy.mean(axis=(0, 2, 3))


@pytest.mark.parametrize("label, bug, leaf", [
    ("basic", _unflipped_kernel, ".dx"),
    ("stride2-remainder", _remainder_forgotten, ".dx"),
    ("groups", _groups_ignored_in_transpose, ".dx"),
    ("depthwise", _groups_ignored_in_transpose, ".dx"),
    ("basic", _db_mean, ".db"),
    ("same-even", _same_extra_row_before, ".dx"),
    ("unbatched-asymmetric", _asymmetric_crops_swapped, ".dx"),
])
def test_planted_bug_fails(label, bug, leaf):
    row = _row_with_backward(label, bug)
    assert row.status == "FAIL" and leaf in row.message, _explain(row)


@pytest.mark.parametrize("label", ["basic", "dilation"])
def test_planted_col2im_that_overwrites_instead_of_adding_fails(label, monkeypatch):
    # overlapping windows: a pixel read by several windows must collect all of them
    original = windows.unwindow

    def overwrite(taps, padded, kernel, stride, dilation):
        total = None
        for k, tap in enumerate(taps):
            placed = original([jnp.zeros_like(tap)] * k + [tap], padded, kernel, stride,
                              dilation)
            total = placed if total is None else jnp.where(placed != 0, placed, total)
        return total

    monkeypatch.setattr(windows, "unwindow", overwrite)
    row = _row_with_backward(label, im2col.conv2d_im2col_backward)
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def test_the_planting_harness_passes_the_truth():
    for impl in ("lax", "im2col"):
        row = _row_with_backward("mixed-pairs", BACKWARDS[impl])
        assert row.status == "PASS", _explain(row)


def test_dw_with_stride_and_dilation_swapped_fails():
    # the two roles the derivation exchanges (stride -> dilation of dY, dilation ->
    # stride over X) left unexchanged
    def swapped(x, w, b, dy, **kw):
        g = conv.geometry(x, w, b, dy, **kw)
        return (conv.input_gradient(dy, w, g),
                conv.weight_gradient(x, dy, g.replace(stride=g.dilation, dilation=g.stride)),
                dy.sum(axis=(0, 2, 3)))
    row = _row_with_backward("mixed-pairs", swapped)
    assert row.status == "FAIL" and ".dw" in row.message, _explain(row)


# --- the hypothesis sweep ---------------------------------------------------------------

@st.composite
def configs(draw):
    return conv_cases.draw_config(lambda lo, hi: draw(st.integers(lo, hi)))


def _sweep_one(config, impl, witness, dtypes=("float32", "float64")):
    case = conv_cases.conv_case("conv/hypothesis", config, implementation=impl)
    for dtype in dtypes:
        row = run.run_case(case, dtype, timing=False, fd=witness)
        assert row.status == "PASS", f"{config}\n{_explain(row)}"


def _sweep(tier, impl):
    """Hypothesis settings with the draw count of ``tier`` for ``impl``."""
    return hypothesis.settings(max_examples=conv_cases.SWEEP_EXAMPLES[tier][impl])


@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_sweep(impl):
    @_sweep("test", impl)
    @hypothesis.given(config=configs(), dtype=st.sampled_from(["float32", "float64"]))
    def check(config, dtype):
        # Each draw in one dtype, drawn with the geometry (a compile per draw is the whole
        # cost; the geometry is what is swept), and no finite-difference witness, to keep
        # the draws within make test's budget; the slow sweep runs every draw in both
        # dtypes with the witness on a quarter, and the registered cases carry it too.
        _sweep_one(config, impl, witness=False, dtypes=(dtype,))
    check()


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_sweep_full(impl):
    @_sweep("slow", impl)
    @hypothesis.given(config=configs(), witness=st.integers(0, 3))
    def check(config, witness):
        _sweep_one(config, impl, witness=witness == 0)
    check()



def test_torchs_one_tuples_mean_the_int():
    # torch's conv2d accepts stride=(2,), padding=(1,), dilation=(2,): both axes
    rng = np.random.default_rng(4)
    x, w, b = (jnp.asarray(rng.normal(size=s)) for s in ((1, 2, 9, 9), (3, 2, 3, 3), (3,)))
    ints = conv.conv2d(x, w, b, stride=2, padding=1, dilation=2)
    np.testing.assert_array_equal(conv.conv2d(x, w, b, stride=(2,), padding=(1,), dilation=[2]),
                                  ints)
    dy = jnp.asarray(rng.normal(size=ints.shape))
    for a, c in zip(conv.conv2d_backward(x, w, b, dy, stride=(2,), padding=(1,), dilation=(2,)),
                    conv.conv2d_backward(x, w, b, dy, stride=2, padding=1, dilation=2),
                    strict=True):
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got \(\)"):
        conv.conv2d(x, w, b, stride=())
