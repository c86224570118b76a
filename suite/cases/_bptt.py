"""Input drawing shared by the rnn and lstm families."""

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
