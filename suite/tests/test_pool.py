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

from manual import pool, windows
from suite import run
from suite.cases import pool as pool_cases
from suite.cases.common import vjp_case

FORWARDS = {"max": pool.max_pool2d, "avg": pool.avg_pool2d}
BACKWARDS = {"max": pool.max_pool2d_backward, "avg": pool.avg_pool2d_backward}


def _explain(row):
    return f"{row.case} {row.dtype}: {row.status}: {row.message}\n{row.traceback}"


def _jit(fn, **kw):
    return jax.jit(functools.partial(fn, **kw))


def _torch_windows(h, k, s, p, d, ceil_mode):
    """torch's output size and, per output, the input rows of its taps (None: padding),
    along one axis: aten's pooling_output_shape and its hstart/hend loops."""
    out = (h + 2 * p - (k - 1) * d - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= h + p:
        out -= 1
    return [[i * s - p + a * d if 0 <= i * s - p + a * d < h else None for a in range(k)]
            for i in range(out)]


def _avg_divisor(h, k, s, p, i, count_include_pad):
    """torch's avg_pool2d divisor along one axis (AveragePool2d.cpp)."""
    start = i * s - p
    end = min(start + k, h + p)
    size = end - start
    return size if count_include_pad else min(end, h) - max(start, 0)


def naive_pool(x, kind, window, stride, padding, dilation=(1, 1), ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """torch max_pool2d / avg_pool2d by their definitions, in loops (unbatched too)."""
    if x.ndim == 3:
        return naive_pool(x[None], kind, window, stride, padding, dilation, ceil_mode,
                          count_include_pad, divisor_override)[0]
    n, c, h, w = x.shape
    rows = _torch_windows(h, window[0], stride[0], padding[0], dilation[0], ceil_mode)
    cols = _torch_windows(w, window[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = np.zeros((n, c, len(rows), len(cols)))
    for i, taps_i in enumerate(rows):
        for j, taps_j in enumerate(cols):
            real = [x[:, :, u, v] for u in taps_i for v in taps_j
                    if u is not None and v is not None]
            if kind == "max":
                y[:, :, i, j] = np.max(real, axis=0) if real else -np.inf
                continue
            if divisor_override is not None:
                d = divisor_override
            else:
                d = (_avg_divisor(h, window[0], stride[0], padding[0], i, count_include_pad)
                     * _avg_divisor(w, window[1], stride[1], padding[1], j, count_include_pad))
            y[:, :, i, j] = np.sum(real, axis=0) / d
    return y


def naive_max_pool_backward(x, dy, window, stride, padding, dilation=(1, 1), ceil_mode=False):
    """Each dY to the first maximum of its window in row-major tap order, by loops."""
    n, c, h, w = x.shape
    rows = _torch_windows(h, window[0], stride[0], padding[0], dilation[0], ceil_mode)
    cols = _torch_windows(w, window[1], stride[1], padding[1], dilation[1], ceil_mode)
    dx = np.zeros_like(x)
    for m in range(n):
        for q in range(c):
            for i, taps_i in enumerate(rows):
                for j, taps_j in enumerate(cols):
                    real = [(u, v) for u in taps_i for v in taps_j
                            if u is not None and v is not None]
                    values = [x[m, q, u, v] for u, v in real]
                    u, v = real[int(np.argmax(values))]  # numpy: the first occurrence
                    dx[m, q, u, v] += dy[m, q, i, j]
    return dx


FORWARD_CONFIGS = [
    # (x shape, window, stride, padding, options)
    ((2, 3, 6, 5), (2, 2), (2, 2), (0, 0), {}),
    ((1, 2, 7, 8), (3, 3), (1, 1), (1, 1), {}),
    ((2, 1, 9, 7), (3, 2), (2, 3), (1, 1), {}),
    ((1, 2, 5, 5), (2, 2), (3, 3), (1, 0), {}),
    ((1, 1, 4, 3), (4, 3), (1, 1), (0, 0), {}),
    # ceil_mode: windows hanging off the bottom and right edges; one that torch drops
    # (5 rows, 2x2 / 2 / padding 1: the 4th window would start in the bottom padding);
    # a window larger than the input, starting inside it
    ((2, 2, 8, 7), (3, 3), (2, 2), (0, 0), dict(ceil_mode=True)),
    ((1, 2, 5, 6), (2, 2), (2, 2), (1, 1), dict(ceil_mode=True)),
    ((1, 1, 1, 3), (2, 4), (2, 4), (0, 0), dict(ceil_mode=True)),
    # unbatched, with ceil_mode
    ((3, 7, 6), (3, 2), (2, 2), (1, 1), dict(ceil_mode=True)),
]
MAX_ONLY = [
    ((2, 2, 9, 8), (3, 3), (1, 1), (1, 1), dict(dilation=(2, 2))),
    ((1, 2, 8, 9), (2, 3), (2, 2), (1, 1), dict(dilation=(3, 2), ceil_mode=True)),
]
AVG_ONLY = [
    ((2, 2, 8, 7), (3, 3), (1, 1), (1, 1), dict(count_include_pad=False)),
    ((1, 2, 7, 8), (3, 2), (2, 2), (1, 1), dict(ceil_mode=True, count_include_pad=False)),
    ((1, 2, 7, 8), (3, 2), (2, 2), (1, 1), dict(ceil_mode=True)),
    ((1, 2, 6, 7), (2, 3), (2, 2), (1, 1), dict(ceil_mode=True, divisor_override=5)),
    ((1, 2, 6, 6), (2, 2), (2, 2), (0, 0), dict(divisor_override=-3)),
]


@pytest.mark.parametrize("kind, shape, window, stride, padding, options",
                         [(kind, *c) for c in FORWARD_CONFIGS for kind in ("max", "avg")]
                         + [("max", *c) for c in MAX_ONLY] + [("avg", *c) for c in AVG_ONLY])
def test_forward_matches_the_definition(kind, shape, window, stride, padding, options):
    x = np.random.default_rng(0).normal(size=shape)
    y = _jit(FORWARDS[kind], window=window, stride=stride, padding=padding, **options)(
        jnp.asarray(x))
    np.testing.assert_allclose(y, naive_pool(x, kind, window, stride, padding, **options),
                               rtol=1e-14, atol=1e-15)


def test_stride_none_means_the_window():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 2, 6, 6)))
    for kind in ("max", "avg"):
        np.testing.assert_array_equal(FORWARDS[kind](x, window=(3, 2)),
                                      FORWARDS[kind](x, window=(3, 2), stride=(3, 2)))
    # torch's empty stride=() is the window too
    np.testing.assert_array_equal(pool.avg_pool2d(x, window=(3, 2), stride=()),
                                  pool.avg_pool2d(x, window=(3, 2), stride=(3, 2)))


def test_torchs_one_tuples_mean_the_int():
    # torch accepts padding=(1,), stride=(2,), kernel_size=(3,): one value for both axes
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 2, 7, 7)))
    dy = jnp.asarray(rng.normal(size=(1, 2, 4, 4)))
    np.testing.assert_array_equal(pool.max_pool2d(x, window=(3,), stride=(2,), padding=(1,)),
                                  pool.max_pool2d(x, window=3, stride=2, padding=1))
    np.testing.assert_array_equal(pool.avg_pool2d_backward(x, dy, window=[3], stride=(2,),
                                                           padding=(1,)),
                                  pool.avg_pool2d_backward(x, dy, window=3, stride=2, padding=1))
    assert windows.pad_pairs("padding", (2,)) == ((2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"padding must be an int or a pair of ints, got \(1, 1, "
                                         r"1\)"):
        pool.avg_pool2d(x, window=3, padding=(1, 1, 1))


def test_ceil_mode_divisors_worked_by_hand():
    # one row of 8 ones, windows of 3, stride 2, padding 1, ceil_mode: padded columns
    # -1..8, windows start at -1, 1, 3, 5, 7 (the floor would stop at 5); the last covers
    # 7, 8 (padding) and 9 (the overhang past the padding). count_include_pad: the
    # padding counts, the overhang does not: divisors 3, 3, 3, 3, 2; without the
    # padding: 2, 3, 3, 3, 1
    x = jnp.ones((1, 1, 8))
    kw = dict(window=(1, 3), stride=(1, 2), padding=(0, 1), ceil_mode=True)
    np.testing.assert_array_equal(pool.avg_pool2d(x, **kw)[0, 0], [2 / 3, 1, 1, 1, 1 / 2])
    np.testing.assert_array_equal(
        pool.avg_pool2d(x, count_include_pad=False, **kw)[0, 0], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(
        pool.avg_pool2d(x, divisor_override=2, **kw)[0, 0], [1, 1.5, 1.5, 1.5, 0.5])
    # the backward shares each window's dY over its pixels by the same divisors
    third = 1 / 3
    dx = pool.avg_pool2d_backward(x, jnp.ones((1, 1, 5)), count_include_pad=False, **kw)
    np.testing.assert_allclose(dx[0, 0], [1 / 2, 1 / 2 + third, third, 2 * third, third,
                                          2 * third, third, third + 1], rtol=1e-15)
    dx = pool.avg_pool2d_backward(x, jnp.ones((1, 1, 5)), **kw)
    np.testing.assert_allclose(dx[0, 0], [third, 2 * third, third, 2 * third, third,
                                          2 * third, third, third + 1 / 2], rtol=1e-15)


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
    # with dilation and ceil_mode
    kw = dict(window=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(3, 2), ceil_mode=True)
    dy = np.random.default_rng(8).normal(size=np.shape(pool.max_pool2d(jnp.asarray(x), **kw)))
    dx = _jit(pool.max_pool2d_backward, **kw)(jnp.asarray(x), jnp.asarray(dy))
    np.testing.assert_allclose(dx, naive_max_pool_backward(x, dy, (2, 3), (2, 1), (1, 1),
                                                           (3, 2), True),
                               rtol=1e-15, atol=1e-15)


def test_planted_last_maximum_on_ties_fails():
    row = run.run_case(_tie_case(_last), "float64", timing=False, fd=False)
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def _last(x, dy, *, window, stride, padding):
    """max_pool2d_backward with ties sent to the LAST maximum (a planted bug: `>=`
    where the convention needs `>`)."""
    window = windows.int_pair("window", window, minimum=1)
    stride = windows.int_pair("stride", stride, minimum=1)
    padding = windows.int_pair("padding", padding, minimum=0)
    (ph, pw), (h, w) = padding, x.shape[2:]
    x_pad = jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    taps = windows.windows(x_pad, window, stride, (1, 1), dy.shape[2:])
    best, arg = taps[0], jnp.zeros(dy.shape, jnp.int32)
    for k, tap in enumerate(taps[1:], start=1):
        later_wins = tap >= best
        best, arg = jnp.where(later_wins, tap, best), jnp.where(later_wins, k, arg)
    routed = [jnp.where(arg == k, dy, 0.0) for k in range(len(taps))]
    dx_pad = windows.unwindow(routed, x_pad.shape[2:], window, stride, (1, 1))
    return dx_pad[:, :, ph:ph + h, pw:pw + w]


def test_dilated_window_of_padding_only_gives_minus_inf_and_no_gradient_as_torch():
    # H = W = 2, k = 2, p = 1, d = 3: the one window's taps are rows -1 and 2, both
    # padding (torch 2.13 gives -inf and a zero gradient too)
    x = jnp.arange(4.0).reshape(1, 1, 2, 2)
    kw = dict(window=2, stride=1, padding=1, dilation=3)

    @jax.jit
    def run_all(x):
        y = pool.max_pool2d(x, **kw)
        return (y, pool.max_pool2d_backward(x, jnp.ones_like(y), **kw),
                jax.grad(lambda x: pool.max_pool2d(x, **kw).sum())(x))
    y, dx, autodiff = run_all(x)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf
    np.testing.assert_array_equal(dx, jnp.zeros_like(x))
    np.testing.assert_array_equal(autodiff, jnp.zeros_like(x))


def test_dilated_max_pool_ties_follow_jax_as_well():
    # the dilated forward is a running maximum over the taps (not reduce_window); its
    # jax.grad must route ties like the undilated one: to the first tap in row-major order
    x = jnp.asarray(np.random.default_rng(6).integers(0, 2, (1, 2, 7, 7)), jnp.float64)
    kw = dict(window=3, stride=(1, 2), padding=1, dilation=2, ceil_mode=True)
    shape = jax.eval_shape(functools.partial(pool.max_pool2d, **kw), x).shape
    dy = jnp.asarray(np.random.default_rng(7).normal(size=shape))

    @jax.jit
    def both(x, dy):
        return (pool.max_pool2d_backward(x, dy, **kw),
                jax.vjp(lambda x: pool.max_pool2d(x, **kw), x)[1](dy)[0])
    dx, vjp = both(x, dy)
    # (the scatter-adds sum in different orders: rounding, where a misrouted dY is O(1))
    np.testing.assert_allclose(dx, vjp, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(dx, naive_max_pool_backward(np.asarray(x), np.asarray(dy),
                                                           (3, 3), (1, 2), (1, 1), (2, 2), True),
                               rtol=1e-14, atol=1e-15)


# --- bad input --------------------------------------------------------------------------

BAD_INPUTS = [
    # (change, pattern)
    (dict(window=(6, 2)),
     r"window \(6, 2\) is larger than the padded input \(5, 8\) \(x \(2, 3, 5, 6\), "
     r"padding \(0, 1\)\)"),
    (dict(window=(7, 2), ceil_mode=True),
     r"window \(7, 2\) is larger than the padded input \(5, 8\) even with ceil_mode's "
     r"overhang of up to stride - 1"),
    (dict(padding=2),
     r"padding \(2, 2\) must be at most half the window \(3, 2\) \(as in torch\), for x "
     r"\(2, 3, 5, 6\)"),
    (dict(padding=-1), r"padding must be >= 0 in each dimension, got -1"),
    (dict(window=0), r"window must be >= 1 in each dimension, got 0"),
    (dict(stride=0), r"stride must be >= 1 in each dimension, got 0"),
    (dict(stride=(2, -1)), r"stride must be >= 1 in each dimension, got \(2, -1\)"),
    (dict(window=2.0), r"window must be an int or a pair of ints, got 2.0"),
    (dict(ceil_mode=1), r"ceil_mode must be a bool, got 1"),
    (dict(x=jnp.ones((5, 6))),
     r"x must have rank 4 \(N, C, H, W\) or 3 \(C, H, W, unbatched\), got shape \(5, 6\)"),
    (dict(x=jnp.ones((3, 5, 6)), dy=jnp.ones((2, 3, 2, 4))),
     r"dy must have rank 3, got shape \(2, 3, 2, 4\)"),
    (dict(dy=jnp.ones((2, 3, 2))), r"dy must have rank 4, got shape \(2, 3, 2\)"),
    (dict(dy=jnp.ones((2, 3, 2, 3))),
     r"dy must have the shape of y, \(2, 3, 2, 4\), got \(2, 3, 2, 3\)$"),
    # ceil_mode: 5 rows, window 2, stride 2, padding 1 — the naive ceiling gives 4
    # windows, but the 4th would start at row 6 = H + p, in the bottom padding
    (dict(window=2, padding=1, ceil_mode=True, dy=jnp.ones((2, 3, 4, 4))),
     r"dy must have the shape of y, \(2, 3, 3, 4\), got \(2, 3, 4, 4\); with ceil_mode the "
     r"last window must start inside the input or the left padding \(torch\), so the "
     r"window that would start in the right padding of axis 2 is not an output"),
    (dict(x=jnp.ones((2, 3, 5, 6), jnp.int32)),
     r"x must be a floating-point array, got shape \(2, 3, 5, 6\) and dtype int32"),
    (dict(dy=jnp.ones((2, 3, 2, 4), jnp.float32)), r"share one floating dtype, got .*dy: float32"),
]

BAD_MAX = [
    (dict(dilation=0), r"dilation must be >= 1 in each dimension, got 0"),
    (dict(dilation=(1, 8)),
     r"window \(3, 2\) with dilation \(1, 8\) \(span \(3, 9\)\) is larger than the padded "
     r"input"),
]

BAD_AVG = [
    (dict(divisor_override=0), r"divisor_override must be None or a nonzero int \(as torch\), "
                               r"got 0"),
    (dict(divisor_override=2.5), r"divisor_override must be None or a nonzero int .*got 2.5"),
    (dict(divisor_override=True), r"divisor_override must be None or a nonzero int .*got True"),
    (dict(count_include_pad="no"), r"count_include_pad must be a bool, got 'no'"),
]


@pytest.mark.parametrize("kind, change, pattern",
                         [(kind, *bad) for bad in BAD_INPUTS for kind in ("max", "avg")]
                         + [("max", *bad) for bad in BAD_MAX]
                         + [("avg", *bad) for bad in BAD_AVG])
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
    with pytest.raises(ValueError, match="divisor_override must be None or a nonzero int"):
        _jit(pool.avg_pool2d, window=2, divisor_override=0)(jnp.ones((1, 1, 4, 4)))


# --- planted bugs -----------------------------------------------------------------------

def _row_with_backward(kind, label, backward):
    config = pool_cases.NAMED_CONFIGS[label]
    case = pool_cases.pool_case(f"pool/{kind}/{label}+planted", config, kind)
    bwd = functools.partial(backward, **config.kwargs(kind))
    grads = type(case.reference(case.build(jax.random.PRNGKey(0), "float64")))

    def manual(inputs):
        return grads(bwd(inputs["x"], inputs["dy"]))
    return run.run_case(dataclasses.replace(case, manual=manual), "float64", timing=False,
                        fd=False)


def _avg_excluding_padding(x, dy, **kw):
    # count_include_pad=False where the case says True: the real pixels of each window
    return pool.avg_pool2d_backward(x, dy, **dict(kw, count_include_pad=False))


def _avg_including_padding(x, dy, **kw):
    # count_include_pad=True where the case says False: k_h k_w for every window
    return pool.avg_pool2d_backward(x, dy, **dict(kw, count_include_pad=True))


def _avg_divided_by_kh(x, dy, *, window, **kw):
    kh, kw_ = windows.int_pair("window", window, minimum=1)
    return pool.avg_pool2d_backward(x, dy, window=window, **kw) * kw_


def _avg_ceil_divisor_counts_the_overhang(x, dy, *, window, **kw):
    # under ceil_mode every window divided by k_h k_w, the overhang past the padding
    # counted as if it were padding
    kh, kw_ = windows.int_pair("window", window, minimum=1)
    return pool.avg_pool2d_backward(x, dy, window=window, **dict(kw, divisor_override=kh * kw_))


def _max_padding_not_cropped_right(x, dy, *, padding, **kw):
    # dX̃ cut from its top-left corner instead of after the padding
    p = windows.int_pair("padding", padding, minimum=0)
    h, w = x.shape[2:]
    x_pad = jnp.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=-np.inf)
    dx_pad = pool.max_pool2d_backward(x_pad, dy, padding=0, **kw)
    return dx_pad[:, :, :h, :w]


def _max_dilation_ignored_in_the_scatter(x, dy, *, window, stride, padding, dilation,
                                         ceil_mode):
    # the argmax found among the dilated taps, but dY put back as if the taps were
    # adjacent: tap (a, b) at (i·s + a, j·s + b)
    g = pool.pool_geometry(x, dy, window=window, stride=stride, padding=padding,
                           dilation=dilation, ceil_mode=ceil_mode)
    x_pad = jnp.pad(x, ((0, 0), (0, 0)) + g.pads, constant_values=-np.inf)
    taps = windows.windows(x_pad, g.window, g.stride, g.dilation, g.out)
    best, arg = taps[0], jnp.zeros(dy.shape, jnp.int32)
    for k, tap in enumerate(taps[1:], start=1):
        later_wins = tap > best
        best, arg = jnp.where(later_wins, tap, best), jnp.where(later_wins, k, arg)
    routed = [jnp.where(arg == k, dy, 0.0) for k in range(len(taps))]
    dx_pad = windows.unwindow(routed, g.padded, g.window, g.stride, (1, 1))
    (top, _), (left, _) = g.pads
    return dx_pad[:, :, top:top + x.shape[2], left:left + x.shape[3]]


@pytest.mark.parametrize("kind, label, bug", [
    ("avg", "3x3-s1-p1", _avg_excluding_padding),
    ("avg", "exclude-pad", _avg_including_padding),
    ("avg", "nonsquare", _avg_divided_by_kh),
    ("avg", "3x3-s2-ceil", _avg_ceil_divisor_counts_the_overhang),
    ("max", "3x3-s2-p1", _max_padding_not_cropped_right),
    ("max", "dilated-p1", _max_dilation_ignored_in_the_scatter),
])
def test_planted_bug_fails(kind, label, bug):
    row = _row_with_backward(kind, label, bug)
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def _overwriting_unwindow():
    """col2im that stores instead of adding: a pixel in several windows keeps one."""
    original = windows.unwindow

    def overwrite(taps, padded, kernel, stride_, dilation):
        total = None
        for k, tap in enumerate(taps):
            placed = original([jnp.zeros_like(tap)] * k + [tap], padded, kernel, stride_,
                              dilation)
            total = placed if total is None else jnp.where(placed != 0, placed, total)
        return total
    return overwrite


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_planted_overlap_overwritten_instead_of_added_fails(kind, monkeypatch):
    monkeypatch.setattr(windows, "unwindow", _overwriting_unwindow())
    row = _row_with_backward(kind, "3x3-s1-p1", BACKWARDS[kind])
    assert row.status == "FAIL" and ".dx" in row.message, _explain(row)


def test_the_planting_harness_passes_the_truth():
    for kind, label in (("max", "3x3-s1-p1"), ("avg", "3x3-s1-p1"), ("max", "dilated-p1"),
                        ("avg", "exclude-pad"), ("avg", "3x3-s2-ceil")):
        row = _row_with_backward(kind, label, BACKWARDS[kind])
        assert row.status == "PASS", _explain(row)


# --- the hypothesis sweep ---------------------------------------------------------------

@st.composite
def configs(draw):
    return pool_cases.draw_config(lambda lo, hi: draw(st.integers(lo, hi)))


def _sweep_one(config, kind, witness, dtypes=("float32", "float64")):
    case = pool_cases.pool_case("pool/hypothesis", config, kind)
    for dtype in dtypes:
        row = run.run_case(case, dtype, timing=False, fd=witness)
        assert row.status == "PASS", f"{config}\n{_explain(row)}"


@pytest.mark.parametrize("tier", [
    "test", pytest.param("slow", marks=pytest.mark.slow)])
def test_sweep(tier):
    """Max and avg pooling over the sweep space, the kind drawn with the geometry."""
    @hypothesis.settings(max_examples=pool_cases.SWEEP_EXAMPLES[tier])
    @hypothesis.given(config=configs(), kind=st.sampled_from(sorted(pool_cases.KINDS)),
                      witness=st.integers(0, 3), dtype=st.sampled_from(["float32", "float64"]))
    def check(config, kind, witness, dtype):
        # make test: each draw in one dtype, drawn with the geometry, and no witness (a
        # compile per draw is the whole cost); the slow tier runs both dtypes and the
        # finite-difference witness on a quarter of the draws; the registered cases carry it
        slow = tier == "slow"
        _sweep_one(config, kind, witness=slow and witness == 0,
                   dtypes=("float32", "float64") if slow else (dtype,))
    check()
