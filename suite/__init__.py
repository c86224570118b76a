"""The join: case registry, comparison policy, runner, report, bench and CLI."""

import jax


def configure():
    """Process-wide JAX settings the suite relies on; call once at start-up.

    float64 must exist for the oracle to be the truth, and implicit rank promotion is an
    error so that a broadcast in a derivation is always a decision, never an accident.
    """
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
