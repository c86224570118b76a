"""manual.pool beyond the registry: the forward against plain loops, the max-pool tie
convention on its own, bad input, planted bugs, and the hypothesis sweep.

The sweep draws from suite.cases.pool.draw_config, builds each case with the registry's
``pool_case`` and judges it with suite.run.run_case: one comparison routine.
"""

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import _windows, pool
from suite import run
from suite.cases import pool as pool_cases
from suite.cases.common import vjp_case

FORWARDS = {"max": pool.max_pool2d, "avg": pool.avg_pool2d}
BACKWARDS = {"max": pool.max_pool2d_backward, "avg": pool.avg_pool2d_backward}


def _explain(row):
    return f"{row.case} {row.dtype}: {row.status}: {row.message}\n{row.traceback}"


def _jit(fn, **kw):
    return jax.jit(functools.partial(fn, **kw))


def naive_pool(x, kind, window, stride, padding):
    """torch max_pool2d / avg_pool2d(count_include_pad=True) by definition, in loops."""
    (kh, kw), (sh, sw), (ph, pw) = window, stride, padding
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


def naive_max_pool_backward(x, dy, window, stride, padding):
    """Each dY to the first maximum of its window in row-major order, by loops."""
    (kh, kw), (sh, sw), (ph, pw) = window, stride, padding
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    dxp = np.zeros_like(xp)
    for m in range(n):
        for q in range(c):
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    win = xp[m, q, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    a, b = divmod(int(np.argmax(win)), kw)  # numpy: first occurrence
                    dxp[m, q, i * sh + a, j * sw + b] += dy[m, q, i, j]
    return dxp[:, :, ph:ph + h, pw:pw + w]


FORWARD_CONFIGS = [
    # (x shape, window, stride, padding)
    ((2, 3, 6, 5), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 7, 8), (3, 3), (1, 1), (1, 1)),
    ((2, 1, 9, 7), (3, 2), (2, 3), (1, 1)),
    ((1, 2, 5, 5), (2, 2), (3, 3), (1, 0)),
    ((1, 1, 4, 3), (4, 3), (1, 1), (0, 0)),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, window, stride, padding", FORWARD_CONFIGS)
def test_forward_matches_the_definition(kind, shape, window, stride, padding):
    x = np.random.default_rng(0).normal(size=shape)
    y = _jit(FORWARDS[kind], window=window, stride=stride, padding=padding)(jnp.asarray(x))
    np.testing.assert_allclose(y, naive_pool(x, kind, window, stride, padding), rtol=1e-14,
                               atol=1e-15)


def test_stride_none_means_the_window():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 2, 6, 6)))
    for kind in ("max", "avg"):
        np.testing.assert_array_equal(FORWARDS[kind](x, window=(3, 2)),
                                      FORWARDS[kind](x, window=(3, 2), stride=(3, 2)))


# --- the max-pool tie convention, on its own --------------------------------------------

TIES = np.array([[1.0, 3.0, 3.0],
                 [3.0, 0.0, 3.0],
                 [3.0, 3.0, 3.0]])


@pytest.mark.parametrize("window, stride, padding, expected", [
    # Worked by hand. 3x3 windows, stride 1, padding 1: every window's first 3 in
    # row-major order — window (0,0) [pad row, then 1 3] -> (0,1); windows (0,1), (0,2),
    # (1,0)... Each entry counts the windows that pick it, each with dY = 1.
    ((3, 3), (1, 1), (1, 1), [[0, 6, 0], [2, 0, 1], [0, 0, 0]]),
    # 2x2 windows, stride 1, no padding: windows at (0,0) (0,1) (1,0) (1,1) pick
    # (0,1) (0,1) (1,0) (1,2)
    ((2, 2), (1, 1), (0, 0), [[0, 2, 0], [1, 0, 1], [0, 0, 0]]),
    # one window covering everything: the first 3, at (0,1)
    ((3, 3), (1, 1), (0, 0), [[0, 1, 0], [0, 0, 0], [0, 0, 0]]),
])
def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order(window, stride, padding,
                                                                   expected):
    x = jnp.asarray(TIES)[None, None]
    kw = dict(window=window, stride=stride, padding=padding)
    dy = jnp.ones_like(pool.max_pool2d(x, **kw))
    dx = _jit(pool.max_pool2d_backward, **kw)(x, dy)
    np.testing.assert_array_equal(dx[0, 0], expected)
    # and that is where jax.grad sends it
    np.testing.assert_array_equal(dx, jax.grad(lambda x: pool.max_pool2d(x, **kw).sum())(x))


def test_max_pool_tie_of_a_constant_image_goes_to_each_windows_top_left():
    x = jnp.zeros((1, 1, 4, 4), jnp.float32)
    kw = dict(window=3, stride=1, padding=1)
    dx = _jit(pool.max_pool2d_backward, **kw)(x, jnp.ones((1, 1, 4, 4), jnp.float32))
    # window (i, j) covers padded rows i..i+2; its first real pixel is (max(i-1,0), max(j-1,0))
    expected = [[4, 2, 2, 0], [2, 1, 1, 0], [2, 1, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(dx[0, 0], expected)
    assert dx.dtype == jnp.float32


def _tie_case(backward, window=(3, 3), stride=(1, 2), padding=(1, 1)):
    """A case whose input is full of ties: small integers on a 6x7 image."""
    def build(key, dtype):
        rng = np.random.default_rng(3)
        return dict(x=jnp.asarray(rng.integers(0, 3, (2, 2, 6, 7)), dtype),
                    dy=jnp.asarray(rng.normal(size=(2, 2, 6, 4)), dtype))
    kw = dict(window=window, stride=stride, padding=padding)
    return vjp_case(name="pool/ties", family="pool", build=build,
                    forward=functools.partial(pool.max_pool2d, **kw),
                    backward=functools.partial(backward, **kw), primals=("x",))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tie_convention_matches_jax_through_the_suite(dtype):
    # no finite-difference witness here: at a tie the max is not differentiable
    row = run.run_case(_tie_case(pool.max_pool2d_backward), dtype, timing=False, fd=False)
    assert row.status == "PASS", _explain(row)


def test_ties_with_numpy_loops():
    x = np.random.default_rng(4).integers(0, 3, (2, 3, 7, 6)).astype(np.float64)
    kw = dict(window=(3, 2), stride=(2, 1), padding=(1, 1))
    dy = np.random.default_rng(5).normal(size=np.shape(pool.max_pool2d(jnp.asarray(x), **kw)))
    dx = _jit(pool.max_pool2d_backward, **kw)(jnp.asarray(x), jnp.asarray(dy))
    np.testing.assert_allclose(dx, naive_max_pool_backward(x, dy, (3, 2), (2, 1), (1, 1)),
                               rtol=1e-15, atol=1e-15)


def test_planted_last_maximum_on_ties_fails():
    row = run.run_case(_tie_case(_last), "float64", timing=False, fd=False)
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def _last(x, dy, *, window, stride, padding):
    """max_pool2d_backward with ties sent to the LAST maximum (a planted bug: `>=`
    where the convention needs `>`)."""
    window = _windows.int_pair("window", window, minimum=1)
    stride = _windows.int_pair("stride", stride, minimum=1)
    padding = _windows.int_pair("padding", padding, minimum=0)
    (ph, pw), (h, w) = padding, x.shape[2:]
    x_pad = jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    taps = _windows.windows(x_pad, window, stride, (1, 1), dy.shape[2:])
    best, arg = taps[0], jnp.zeros(dy.shape, jnp.int32)
    for k, tap in enumerate(taps[1:], start=1):
        later_wins = tap >= best
        best, arg = jnp.where(later_wins, tap, best), jnp.where(later_wins, k, arg)
    routed = [jnp.where(arg == k, dy, 0.0) for k in range(len(taps))]
    return _windows.unwindow(routed, x_pad.shape[2:], window, stride, (1, 1))[:, :, ph:ph + h, pw:pw + w]


# --- bad input --------------------------------------------------------------------------

BAD_INPUTS = [
    # (change, pattern)
    (dict(window=(6, 2)), r"window \(6, 2\) is larger than the padded input \(5, 8\) \(x \(2, 3, 5, 6\), padding \(0, 1\)\)"),
    (dict(padding=2), r"padding \(2, 2\) must be at most half the window \(3, 2\) \(as in torch\), for x \(2, 3, 5, 6\)"),
    (dict(padding=-1), r"padding must be >= 0 in each dimension, got -1"),
    (dict(window=0), r"window must be >= 1 in each dimension, got 0"),
    (dict(stride=0), r"stride must be >= 1 in each dimension, got 0"),
    (dict(stride=(2, -1)), r"stride must be >= 1 in each dimension, got \(2, -1\)"),
    (dict(window=2.0), r"window must be an int or a pair of ints, got 2.0"),
    (dict(x=jnp.ones((3, 5, 6))), r"x must have rank 4, got shape \(3, 5, 6\)"),
    (dict(dy=jnp.ones((2, 3, 2))), r"dy must have rank 4, got shape \(2, 3, 2\)"),
    (dict(dy=jnp.ones((2, 3, 2, 3))), r"dy must have the shape of y, \(N, C, H_out, W_out\) = \(2, 3, 2, 4\), got \(2, 3, 2, 3\)"),
    (dict(x=jnp.ones((2, 3, 5, 6), jnp.int32)), r"x must be a floating-point array, got shape \(2, 3, 5, 6\) and dtype int32"),
    (dict(dy=jnp.ones((2, 3, 2, 4), jnp.float32)), r"share one floating dtype, got .*dy: float32"),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("change, pattern", BAD_INPUTS)
def test_bad_input_is_a_value_error_naming_the_argument(kind, change, pattern):
    args = dict(x=jnp.ones((2, 3, 5, 6)), dy=jnp.ones((2, 3, 2, 4)))
    kw = dict(window=(3, 2), stride=2, padding=(0, 1))
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    with pytest.raises(ValueError, match=pattern):
        BACKWARDS[kind](args["x"], args["dy"], **kw)
    if "dy" not in change:
        with pytest.raises(ValueError, match=pattern):
            FORWARDS[kind](args["x"], **kw)


def test_bad_input_is_caught_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="at most half the window"):
        _jit(pool.max_pool2d, window=2, padding=2)(jnp.ones((1, 1, 4, 4)))


# --- planted bugs -----------------------------------------------------------------------

def _row_with_backward(kind, label, backward):
    config = pool_cases.NAMED_CONFIGS[label]
    case = pool_cases.pool_case(f"pool/{kind}/{label}+planted", config, kind)
    bwd = functools.partial(backward, **config.kwargs)
    grads = type(case.reference(case.build(jax.random.PRNGKey(0), "float64")))
    manual = lambda inputs: grads(bwd(inputs["x"], inputs["dy"]))
    return run.run_case(dataclasses.replace(case, manual=manual), "float64", timing=False,
                        fd=False)


def _avg_excluding_padding(x, dy, *, window, stride, padding):
    # count_include_pad=False: divide by the real pixels of each window instead of k_h k_w
    ones = jnp.ones_like(x)
    count = pool.avg_pool2d(ones, window=window, stride=stride, padding=padding)
    return pool.avg_pool2d_backward(x, dy / count, window=window, stride=stride,
                                    padding=padding)


def _avg_divided_by_kh(x, dy, *, window, stride, padding):
    kh, kw = _windows.int_pair("window", window, minimum=1)
    return pool.avg_pool2d_backward(x, dy, window=window, stride=stride, padding=padding) * kw


def _max_padding_not_cropped_right(x, dy, *, window, stride, padding):
    # dX̃ cut from its top-left corner instead of after the padding
    p = _windows.int_pair("padding", padding, minimum=0)
    h, w = x.shape[2:]
    x_pad = jnp.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    dx_pad = pool.max_pool2d_backward(x_pad, dy, window=window, stride=stride, padding=0)
    return dx_pad[:, :, :h, :w]


def _overwriting_unwindow():
    """col2im that stores instead of adding: a pixel in several windows keeps one."""
    original = _windows.unwindow

    def overwrite(taps, padded, kernel, stride_, dilation):
        total = None
        for k, tap in enumerate(taps):
            placed = original([jnp.zeros_like(tap)] * k + [tap], padded, kernel, stride_,
                              dilation)
            total = placed if total is None else jnp.where(placed != 0, placed, total)
        return total
    return overwrite


@pytest.mark.parametrize("kind, label, bug", [
    ("avg", "3x3-s1-p1", _avg_excluding_padding),
    ("avg", "nonsquare", _avg_divided_by_kh),
    ("max", "3x3-s2-p1", _max_padding_not_cropped_right),
])
def test_planted_bug_fails(kind, label, bug):
    row = _row_with_backward(kind, label, bug)
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_planted_overlap_overwritten_instead_of_added_fails(kind, monkeypatch):
    monkeypatch.setattr(_windows, "unwindow", _overwriting_unwindow())
    row = _row_with_backward(kind, "3x3-s1-p1", BACKWARDS[kind])
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def test_the_planting_harness_passes_the_truth():
    for kind in ("max", "avg"):
        row = _row_with_backward(kind, "3x3-s1-p1", BACKWARDS[kind])
        assert row.status == "PASS", _explain(row)


# --- the hypothesis sweep ---------------------------------------------------------------

@st.composite
def configs(draw):
    return pool_cases.draw_config(lambda lo, hi: draw(st.integers(lo, hi)))


def _sweep_one(config, kind, witness):
    case = pool_cases.pool_case("pool/hypothesis", config, kind)
    for dtype in ("float32", "float64"):
        row = run.run_case(case, dtype, timing=False, fd=witness)
        assert row.status == "PASS", f"{config}\n{_explain(row)}"


@pytest.mark.parametrize("tier", [
    "test", pytest.param("slow", marks=pytest.mark.slow)])
def test_sweep(tier):
    """Max and avg pooling over the sweep space, the kind drawn with the geometry."""
    @hypothesis.settings(max_examples=pool_cases.SWEEP_EXAMPLES[tier])
    @hypothesis.given(config=configs(), kind=st.sampled_from(sorted(pool_cases.KINDS)),
                      witness=st.integers(0, 3))
    def check(config, kind, witness):
        # the finite-difference witness on a quarter of the draws in the slow tier only,
        # to keep 200 draws within make test's budget; the registered cases carry it
        _sweep_one(config, kind, witness=tier == "slow" and witness == 0)
    check()
