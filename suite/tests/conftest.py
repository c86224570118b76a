"""Test-session set-up: float64 on, rank promotion an error, full-precision matmuls,
hypothesis reproducible."""

import hypothesis
import jax
import pytest

from suite.config import configure

configure()

# derandomize: every run draws the same examples, so every failure reproduces.
hypothesis.settings.register_profile(
    "suite", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("suite")


def pytest_runtest_setup(item):
    for platform in ("gpu", "tpu"):
        if item.get_closest_marker(platform):
            try:
                jax.devices(platform)
            except RuntimeError:
                pytest.skip(f"no {platform.upper()} device")


@pytest.fixture(autouse=True)
def _strict_jax():
    """Every test runs with x64 on, implicit rank promotion raising, matmuls at HIGHEST."""
    assert jax.config.jax_enable_x64
    assert jax.config.jax_numpy_rank_promotion == "raise"
    assert jax.config.jax_default_matmul_precision == "highest"
    yield
