"""The generic correctness test: every registered case, both dtypes, must PASS.

One spec table (the registry) drives it, as in JAX's own tests. The planted-bug tests
below show that the same path turns a wrong derivative into a FAIL for every family.
"""

import dataclasses

import jax
import pytest

from suite import cases as registry
from suite import run
from suite.tests.planting import nudge_one_element, plant, scale


def _device_marks(case):
    """A case that needs a mesh runs where the process has the devices (test_sharded.py
    runs them with four forced host devices); here it is skipped."""
    have = jax.device_count()
    return [pytest.mark.skip(reason=f"needs {case.devices} devices, this process has {have}")
            ] if case.devices > have else []


def _params(tiers):
    out = []
    for case in registry.cases(tiers=tiers):
        marks = ([pytest.mark.slow] if case.tier == "slow" else []) + _device_marks(case)
        out += [pytest.param(case, dtype, id=f"{case.name}-{dtype}", marks=marks)
                for dtype in case.dtypes]
    return out


def _explain(row):
    return f"{row.case} {row.dtype}: {row.status}: {row.message}\n{row.traceback}"


@pytest.mark.parametrize("case,dtype", _params(("test", "slow")))
def test_case_matches_autodiff(case, dtype):
    row = run.run_case(case, dtype, timing=False)
    assert row.status == "PASS", _explain(row)


def _first_case_of_each_family():
    seen = {}
    for case in registry.cases(tiers=("test",)):
        seen.setdefault(case.family, case)
    return [pytest.param(c, id=c.family, marks=_device_marks(c)) for c in seen.values()]


@pytest.mark.parametrize("case", _first_case_of_each_family())
def test_planted_one_element_slip_fails_float64(case):
    row = run.run_case(plant(case, manual=nudge_one_element), "float64", timing=False, fd=False)
    assert row.status == "FAIL", _explain(row)


@pytest.mark.parametrize("case", _first_case_of_each_family())
def test_planted_shared_mistake_is_caught_by_finite_differences(case):
    # manual and reference wrong in the same way agree with each other; only the
    # finite-difference witness, which shares no code with either, can object.
    if case.objective is None:
        pytest.skip("this family's first case has no objective for a witness")
    def double(out):
        return scale(out, 2.0)

    row = run.run_case(plant(case, manual=double, reference=double), "float64", timing=False)
    assert row.status == "FAIL" and "finite-difference" in row.message, _explain(row)


def test_names_are_unique_and_families_have_test_cases():
    names = [c.name for c in registry.cases(tiers=None)]
    assert len(names) == len(set(names))
    for family in registry.families():
        assert registry.cases(family=family.name), f"family {family.name} has no cases"
        names = [c.name for c in registry.cases(family=family.name, tiers=None)]
        assert all(n.startswith(family.name + "/") for n in names)


def test_a_builder_that_ignores_the_dtype_is_an_error_row():
    case = registry.cases(tiers=("test",))[0]
    sloppy = dataclasses.replace(case, build=lambda key, dtype: case.build(key, "float64"))
    row = run.run_case(sloppy, "float32", timing=False)
    assert row.status == "ERROR" and "float64" in row.message, _explain(row)


def test_unknown_family_and_case_are_value_errors():
    with pytest.raises(ValueError, match="unknown family"):
        registry.cases(family="nope")
    with pytest.raises(ValueError, match="unknown case"):
        registry.get("nope/none")
