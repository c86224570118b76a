"""Argument validation shared by the manual derivations.

Shapes and dtypes are static under ``jax.jit``, so these checks run once at trace time
and turn bad input into a ``ValueError`` that names the argument and what it got,
instead of an XLA error from deep inside a primitive.
"""

import jax.numpy as jnp
import numpy as np

from manual.types import ArrayLike

__all__ = ["require_float", "require_rank", "require_floats", "require_one_dtype", "require_like_x",
           "require_shape", "require_positive"]


def _describe(x: ArrayLike) -> str:
    return f"shape {tuple(np.shape(x))} and dtype {jnp.result_type(x)}"


def require_float(name: str, x: ArrayLike) -> None:
    """``x`` must be a real floating-point array."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got {_describe(x)}")


def require_rank(name: str, x: ArrayLike, rank: int) -> None:
    """``x`` must have exactly ``rank`` dimensions."""
    if np.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank}, got {_describe(x)}")


def require_floats(rank_by_name: dict[str, int], **arrays: ArrayLike) -> None:
    """Every array is floating point, of its rank, and all share one dtype."""
    for name, x in arrays.items():
        require_float(name, x)
        require_rank(name, x, rank_by_name[name])
    require_one_dtype(**arrays)


def require_one_dtype(**arrays: ArrayLike) -> None:
    """All arrays share one dtype (the message lists each argument's)."""
    dtypes = {name: jnp.result_type(x) for name, x in arrays.items()}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise ValueError(f"arguments must share one floating dtype, got {got}")


def require_like_x(dy: ArrayLike, x: ArrayLike) -> None:
    """An elementwise-shaped layer's ``dy`` has the shape of its input ``x`` (and output)."""
    if dy is not None and np.shape(dy) != np.shape(x):
        raise ValueError(f"dy must have the shape of x (and y), {tuple(np.shape(x))}, "
                         f"got {tuple(np.shape(dy))}")


def require_shape(name: str, x: ArrayLike, shape: tuple[int, ...]) -> None:
    """``x`` has exactly ``shape``."""
    if tuple(np.shape(x)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {_describe(x)}")


def require_positive(name: str, value: object) -> None:
    """``value`` is a number > 0 (checked when it is a Python or numpy number; a JAX
    array, traced or not, is taken as it is)."""
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
    if not (number or hasattr(value, "dtype")) or (number and not value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
