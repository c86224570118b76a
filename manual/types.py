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

__all__ = ["Array", "ArrayLike"]

Array = jnp.ndarray  # the class jax.Array, by its jax.numpy name
ArrayLike = Array | np.ndarray | np.bool_ | np.number | bool | int | float | complex
