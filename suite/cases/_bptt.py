"""Input drawing shared by the rnn and lstm families.

A sequence case needs half a dozen arrays of different shapes. Drawn one by one, each
new shape costs a compile of the random-bits generator (~0.3 s on CPU, per shape and
dtype) — most of a small case's time in ``make test``. Here every array is a slice of
one standard-normal draw from the case's key, of a size shared by all small cases, so
the generator compiles once per dtype and process.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

POOL = 1 << 14  # at least this many normals per draw: every small case shares one shape


def normals(key, shapes, dtype):
    """A dict of standard-normal arrays, ``{name: (shape, scale)}``, in ``dtype``, from ``key``."""
    sizes = [math.prod(shape) for shape, _ in shapes.values()]
    pool = max(POOL, 1 << (sum(sizes) - 1).bit_length())
    flat = np.asarray(jax.random.normal(key, (pool,), dtype))
    out, start = {}, 0
    for (name, (shape, scale)), size in zip(shapes.items(), sizes):
        out[name] = jnp.asarray((scale * flat[start:start + size]).reshape(shape), dtype)
        start += size
    return out
