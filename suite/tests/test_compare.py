"""The comparison policy itself: it must pass the truth and fail plausible mistakes."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from reference import finite_diff
from suite import cases as registry
from suite import compare as cmp
from suite import run
from suite.tests.planting import plant

RNG = np.random.default_rng(0)


def _row(case, dtype="float64", **planted):
    return run.run_case(plant(registry.get(case), **planted), dtype, timing=False)


def test_identical_leaves_pass_with_zero_error():
    b = RNG.normal(size=(4, 5))
    r = cmp.compare_leaf(b, b, cmp.tolerance("float64"))
    assert r.passed and r.normwise == 0.0 and r.max_abs == 0.0 and r.frac_outside == 0.0


def test_reports_worst_index_and_both_values():
    b = RNG.normal(size=(3, 4))
    a = b.copy()
    a[2, 1] += 1e-3
    r = cmp.compare_leaf(a, b, cmp.tolerance("float64"), "w")
    assert not r.passed and r.worst_index == (2, 1)
    assert r.worst_actual == a[2, 1] and r.worst_expected == b[2, 1]
    assert math.isclose(r.max_abs, 1e-3, rel_tol=1e-9)
    assert math.isclose(r.normwise, 1e-3 / np.linalg.norm(b), rel_tol=1e-9)
    assert "w" in r.message and "(2, 1)" in r.message


def test_relative_error_denominator_is_floored():
    b = np.array([1.0, 0.0])
    a = np.array([1.0, 1e-9])
    r = cmp.compare_leaf(a, b, cmp.tolerance("float64"))
    assert r.max_rel == pytest.approx(1e-9 / cmp.REL_FLOOR)


def test_elementwise_band_catches_what_the_norm_hides():
    # one entry in a million off by 0.5%: the normwise error (5e-6) is within the float32
    # tolerance, the allclose band is not
    b = np.ones(10**6, np.float32)
    a = b.copy()
    a[7] += 5e-3
    r = cmp.compare_leaf(a, b, cmp.tolerance("float32"))
    assert r.normwise < cmp.tolerance("float32").normwise and not r.passed
    assert r.frac_outside == pytest.approx(1e-6) and r.worst_index == (7,)


@pytest.mark.parametrize("bad, why", [(np.nan, "non-finite"), (np.inf, "non-finite")])
def test_non_finite_fails(bad, why):
    b = np.ones(3)
    a = b.copy()
    a[1] = bad
    r = cmp.compare_leaf(a, b, cmp.tolerance("float64"))
    assert not r.passed and why in r.message


def test_shape_and_structure_mismatches_fail_without_raising():
    assert not cmp.compare_leaf(np.ones((2, 3)), np.ones((3, 2)), cmp.tolerance("float64")).passed
    result = cmp.compare((np.ones(2), np.ones(2)), (np.ones(2),), "float64")
    assert not result.passed and "structure" in result.message


def test_unknown_dtype_is_a_value_error():
    with pytest.raises(ValueError, match="int32"):
        cmp.tolerance("int32")


def test_tolerances_are_ordered_by_precision():
    f32, f64 = cmp.tolerance("float32"), cmp.tolerance("float64")
    assert f64.normwise <= 1e-12  # the design's promise for float64
    assert f64.normwise < f32.normwise and f64.rtol < f32.rtol and f64.atol < f32.atol
    # each tolerance is a modest multiple of its unit roundoff, never below it
    for tol, dtype in ((f32, np.float32), (f64, np.float64)):
        u = np.finfo(dtype).eps / 2
        assert 100 * u <= tol.normwise <= 1e5 * u
    # the half-precision rows (the checker's) are a few u: short code, judged against float64
    for name in ("float16", "bfloat16"):
        tol = cmp.tolerance(name)
        assert 4 <= tol.normwise / cmp.unit_roundoff(name) <= 16 and tol.normwise > f32.normwise


def test_widening_is_clipped_to_the_rows_cap():
    tol = cmp.tolerance("float64")
    assert tol.widened(0.5) == tol and tol.widened(10.0).normwise == pytest.approx(1e-11)
    assert tol.widened(1e9).normwise == pytest.approx(tol.normwise * tol.cap)
    # factor = 10·α·u / normwise: a well-conditioned α (a few u) does not widen at all
    assert cmp.widening("float64", 5.0)[0] == 1.0
    factor, needed = cmp.widening("float32", 1e4)
    assert factor == needed == pytest.approx(10 * 1e4 * 2.0**-24 / 1e-5)
    assert cmp.widening("float32", 1e9)[0] == cmp.tolerance("float32").cap < 1e9


def test_amplification_is_the_discrepancy_in_units_of_u():
    b = RNG.normal(size=100)
    a = b * (1 + 3 * 2.0**-24)
    assert cmp.amplification(a, b, "float32") == pytest.approx(3.0)
    assert np.isnan(cmp.amplification(a * np.inf, b, "float32"))


# --- the three planted bugs of the linear layer ---------------------------------------

def test_relative_slip_of_1e_6_fails_in_float64():
    row = _row("linear/nonsquare", manual=lambda g: g._replace(dw=g.dw * (1 + 1e-6)))
    assert row.status == "FAIL" and ".dw" in row.message


def test_same_slip_is_within_float32_tolerance():
    # float32 is judged by its own unit roundoff: 1e-6 relative is ~17 ulp, fair game
    row = _row("linear/nonsquare", "float32", manual=lambda g: g._replace(dw=g.dw * (1 + 1e-6)))
    assert row.status == "PASS", row.message
    row = _row("linear/nonsquare", "float32", manual=lambda g: g._replace(dw=g.dw * (1 + 1e-4)))
    assert row.status == "FAIL"


def test_transposed_dw_fails():
    row = _row("linear/square", manual=lambda g: g._replace(dw=g.dw.T))
    assert row.status == "FAIL" and ".dw" in row.message


@pytest.mark.parametrize("wrong_db", [lambda dy: dy[0], lambda dy: dy.mean(axis=0)])
def test_db_without_the_batch_sum_fails(wrong_db):
    case = registry.get("linear/nonsquare")

    def manual(inputs):
        g = case.manual(inputs)
        return g._replace(db=wrong_db(inputs["dy"]))
    import dataclasses
    row = run.run_case(dataclasses.replace(case, manual=manual), "float64", timing=False)
    assert row.status == "FAIL" and ".db" in row.message


# --- the finite-difference witness ----------------------------------------------------

def test_finite_differences_recover_known_derivatives():
    x = jnp.array([0.3, -1.2, 2.0])
    v = jnp.array([1.0, 2.0, -0.5]) / jnp.sqrt(5.25)

    def f(x):
        return jnp.sum(jnp.sin(x) * x**2)

    df = jnp.vdot(jnp.cos(x) * x**2 + 2 * x * jnp.sin(x), v)
    d2f = jnp.vdot(v * v, -jnp.sin(x) * x**2 + 4 * x * jnp.cos(x) + 2 * jnp.sin(x))
    fd1 = finite_diff.directional_derivative(f, x, v, order=1)
    fd2 = finite_diff.directional_derivative(f, x, v, order=2)
    assert fd1 == pytest.approx(float(df), rel=1e-11)
    assert fd2 == pytest.approx(float(d2f), rel=1e-8)


def test_richardson_error_estimate_covers_the_actual_error():
    # exp(10x) along a unit direction: the witness's own error estimate bounds its
    # actual error (within FD_SAFETY), and a 1e-4 slip is still far outside it
    x, v = jnp.array([1.5, -0.2]), jnp.array([0.6, 0.8])

    def f(x):
        return jnp.sum(jnp.exp(10 * x))
    g = 10 * jnp.exp(10 * x)
    exact = float(jnp.vdot(g, v))
    value, error = finite_diff.directional_derivative(f, x, v, with_error=True)
    assert value == finite_diff.directional_derivative(f, x, v)  # the same R(h) as before
    assert abs(value - exact) <= cmp.FD_SAFETY * error and error < 1e-9 * abs(exact)
    assert cmp.witness(value, g, v, 1, fd_error=error)[1]
    assert not cmp.witness(value * (1 + 1e-4), g, v, 1, fd_error=error)[1]


def test_exact_steps_remove_the_rounding_of_the_point():
    # x ~ 1000: x + h·v is rounded by eps·1000 ≈ 2e-13, a 1e-9 relative error in the
    # difference quotient; the exact step makes every point x + c·d representable
    x = 1000.0 + RNG.normal(size=8)
    d = finite_diff.exact_step(x, 7.4e-4 * RNG.normal(size=8))
    for c in finite_diff.OFFSETS:
        assert np.array_equal((x + c * d) - x, c * d)
    assert finite_diff.exact_step(0.0, 1e-4) == pytest.approx(1e-4, rel=1e-15)


def test_one_sided_differences_find_a_kink_and_only_a_kink():
    h = finite_diff.probe_step(np.float64)

    def at(f, x):
        return np.array([f(x + c * h) for c in finite_diff.OFFSETS])
    kink = finite_diff.richardson(at(lambda t: max(t, 0.0) + 0.5 * t * t, 0.0), h)
    assert finite_diff.one_sided_disagree(kink)
    assert kink.left == pytest.approx(0.0, abs=1e-9)
    assert kink.right == pytest.approx(1.0, abs=1e-9)
    smooth = finite_diff.richardson(at(np.sin, 0.3), h)
    assert not finite_diff.one_sided_disagree(smooth)
    assert smooth.central == pytest.approx(np.cos(0.3), abs=smooth.central_error)


def test_witness_rejects_a_wrong_derivative():
    g = {"a": jnp.array([1.0, 2.0])}
    v = {"a": jnp.array([0.6, 0.8])}
    assert cmp.witness(2.2, g, v, 1)[1]
    assert not cmp.witness(2.2 * (1 + 1e-6), g, v, 1)[1]
    h = jnp.array([[2.0, 0.0], [0.0, 4.0]])
    assert cmp.witness(0.36 * 2 + 0.64 * 4, h, v, 2)[1]
    assert not cmp.witness(0.36 * 2 + 0.64 * 4 + 1e-3, h, v, 2)[1]
