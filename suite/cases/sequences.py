"""What the recurrent families share: their tables of sequence cases, and input drawing."""

import collections
import functools

import jax.numpy as jnp

from reference import autodiff
from suite.cases import Case
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["CHECKPOINT_CASES", "SEQUENCE_CASES", "normals", "sequence_case"]


def normals(key, shapes, dtype):
    """A dict of standard-normal arrays, ``{name: (shape, scale)}``, in ``dtype``, from ``key``.

    One host-side generator for the whole dict (see suite/cases/common.py), so a case's
    half-dozen arrays cost no compile at all.
    """
    rng = numpy_rng(key)
    return {name: jnp.asarray((scale * rng.standard_normal(shape)).astype(dtype))
            for name, (shape, scale) in shapes.items()}


def sequence_case(name, family, *, build, forward, backward, reference_forward, primals,
                  sizes, truncation=None, pi=None, checkpoint=None, tier="test",
                  dtypes=("float32", "float64")):
    """A registry case for one BPTT strategy of a recurrent layer.

    Full BPTT is a vjp_case (jax.vjp of ``forward``, with the finite-difference
    witness). Truncated and randomized BPTT are not the gradient of any objective, so
    they have no witness: their oracle is jax.vjp of ``reference_forward(*primals,
    truncation=, xi=)``, which returns the hidden states with stop_gradient at the cuts.
    ``backward(*primals, dhs, truncation=, xi=)`` is the hand-derived side; with
    ``checkpoint`` it is called with ``checkpoint=`` too, against the same oracles
    (checkpointing changes the memory, never the gradient).
    """
    if checkpoint is not None:
        backward = functools.partial(backward, checkpoint=checkpoint)
    if truncation is None and pi is None:
        return vjp_case(name=name, family=family, build=build, forward=forward,
                        backward=backward, primals=primals, cotangent="dhs", sizes=sizes,
                        tier=tier, dtypes=dtypes)
    grads = collections.namedtuple("Cotangents", [f"d{k}" for k in primals])

    def args(inputs):
        return tuple(inputs[k] for k in primals)

    def manual(inputs):
        return grads(*backward(*args(inputs), inputs["dhs"], truncation=truncation,
                               xi=inputs.get("xi")))

    def reference(inputs):
        def cut_forward(*p):
            return reference_forward(*p, truncation=truncation, xi=inputs.get("xi"))
        return grads(*autodiff.vjp(cut_forward, args(inputs), inputs["dhs"]))

    return Case(name=name, family=family, build=build, manual=manual, reference=reference,
                sizes=sizes, tier=tier, dtypes=dtypes)


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

# Checkpointed BPTT: (name, T, N, D, H, truncation, pi, checkpoint, tier), the same oracles
# as the rows above. The test tier has one row, a k that does not divide T combined with
# truncation and randomized truncation (suite/tests/test_bptt_checkpoint.py sweeps every
# k at a small T against full BPTT and its oracle in make test too); "slow" has the rest.
# Families may demote the test row to "slow" to stay in make test's budget (lstm, gru).
CHECKPOINT_CASES = (
    ("T7-k3-xi0.5-ck-2", 7, 3, 4, 5, 3, 0.5, 2, "test"),
    ("T7-ck3", 7, 3, 4, 5, None, None, 3, "slow"),
    ("T1-ck1", 1, 3, 2, 4, None, None, 1, "slow"),
    ("T7-ck1", 7, 3, 4, 5, None, None, 1, "slow"),
    ("T100-ck-sqrt", 100, 2, 3, 4, None, None, "sqrt", "slow"),
    ("T100-k30-ck7", 100, 2, 3, 4, 30, None, 7, "slow"),
    ("T100-xi0.8-ck-sqrt", 100, 2, 3, 4, None, 0.8, "sqrt", "slow"),
    ("T100-N16-H32-ck-sqrt", 100, 16, 8, 32, None, None, "sqrt", "slow"),
    ("T100-N32-H128-ck-sqrt", 100, 32, 64, 128, None, None, "sqrt", "report"),
)
