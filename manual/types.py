"""Type names for the hints of manual/, spelled with what manual/ may import.

manual/ imports only jax.numpy, jax.lax, jax.random and numpy (the hand-derived rule), so
``jax.Array`` and ``jax.typing.ArrayLike`` are written here in those terms:
``jnp.ndarray`` *is* ``jax.Array``, and an array-like is what jax.numpy accepts.

Example::

    >>> import jax.numpy as jnp
    >>> isinstance(jnp.ones(2), Array)
    True
"""

import jax.numpy as jnp
import numpy as np

__all__ = ["Array", "ArrayLike", "DTypeLike", "Matvec"]

Array = jnp.ndarray  # the class jax.Array, by its jax.numpy name
ArrayLike = Array | np.ndarray | np.bool_ | np.number | bool | int | float | complex
DTypeLike = str | type | np.dtype  # what jnp.dtype accepts: "float32", jnp.float64, a dtype
# v -> A v on flat vectors: any callable jax can trace. manual/ may not import typing or
# collections.abc, so this hint names the role and accepts every callable.
Matvec = object
