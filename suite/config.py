"""The suite's own process-wide JAX settings: for its CLI process and its test session.

A function a user calls never changes global JAX settings; ``configure`` is only called
by ``backprop-suite`` itself (suite/cli.py) and by the test conftest, where

- float64 must exist for the oracle to be the truth;
- implicit rank promotion is an error, so that a broadcast in a derivation is always a
  decision, never an accident;
- matrix products run at full precision: on a GPU, JAX's default float32 matmul may use
  TF32 (10 mantissa bits), which would judge a float32 derivation against an oracle three
  orders of magnitude blurrier than float32 itself — or pass a wrong one by accident.
"""

import jax

__all__ = ["configure"]


def configure() -> None:
    """float64 on, implicit rank promotion raising, matmuls at HIGHEST: for the whole process."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")
