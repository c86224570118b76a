"""Test-session set-up: float64 on, rank promotion an error, hypothesis reproducible."""

import os

# The tests judge numbers, not speed: compile with XLA's cheaper CPU backend passes.
# On this 2-core machine compilation is most of a small case's cost and these flags
# cut it by about 40%; no fast-math either way, and both sides of every comparison are
# compiled alike. Set before JAX creates its CPU client.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""),
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
]))

import hypothesis  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

import suite  # noqa: E402

suite.configure()

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
    """Every test runs with x64 on and implicit rank promotion raising."""
    assert jax.config.jax_enable_x64
    assert jax.config.jax_numpy_rank_promotion == "raise"
    yield
