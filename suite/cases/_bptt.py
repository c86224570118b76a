"""What the rnn and lstm families share: their table of sequence cases, and input drawing."""

import jax.numpy as jnp

from suite.cases._common import numpy_rng


def normals(key, shapes, dtype):
    """A dict of standard-normal arrays, ``{name: (shape, scale)}``, in ``dtype``, from ``key``.

    One host-side generator for the whole dict (see suite/cases/_common.py), so a case's
    half-dozen arrays cost no compile at all.
    """
    rng = numpy_rng(key)
    return {name: jnp.asarray((scale * rng.standard_normal(shape)).astype(dtype))
            for name, (shape, scale) in shapes.items()}


# (name, T, N, D, H, truncation, pi, tier). T covers 1, 2, an odd length and 100; the
# truncations None, 1, a k that does not divide T and k >= T; N = 1 appears; pi marks
# randomized truncation (alone and composed with a regular one). The "test" tier covers
# each of those at least once (every row is a compile, the cost of make test); "slow"
# has the rest, "report" the larger shapes.
SEQUENCE_CASES = (
    ("T7", 7, 3, 4, 5, None, None, "test"),
    ("T1", 1, 3, 2, 4, None, None, "slow"),
    ("T2-N1", 2, 1, 3, 4, None, None, "slow"),
    ("T100", 100, 2, 3, 4, None, None, "slow"),
    ("T1-N1-k1", 1, 1, 3, 4, 1, None, "test"),
    ("T2-k1", 2, 3, 3, 4, 1, None, "test"),
    ("T7-k1", 7, 3, 4, 5, 1, None, "slow"),
    ("T7-k3", 7, 3, 4, 5, 3, None, "slow"),
    ("T7-k7", 7, 3, 4, 5, 7, None, "slow"),
    ("T2-N1-k5", 2, 1, 3, 4, 5, None, "slow"),
    ("T100-k30", 100, 2, 3, 4, 30, None, "test"),
    ("T100-N1-k1", 100, 1, 3, 4, 1, None, "slow"),
    ("T7-xi0.5", 7, 3, 4, 5, None, 0.5, "slow"),
    ("T100-xi0.8", 100, 2, 3, 4, None, 0.8, "slow"),
    ("T7-k3-xi0.5", 7, 3, 4, 5, 3, 0.5, "test"),
    ("T100-N16-H32", 100, 16, 8, 32, None, None, "slow"),
    ("T100-N16-H32-k10", 100, 16, 8, 32, 10, None, "slow"),
    ("T100-N16-H32-xi0.7", 100, 16, 8, 32, None, 0.7, "slow"),
    ("T100-N32-H128", 100, 32, 64, 128, None, None, "report"),
    ("T100-N32-H128-k20", 100, 32, 64, 128, 20, None, "report"),
)
