"""Gradient clipping by global norm, by hand (the usual remedy for exploding BPTT gradients).

Given gradients g (any nest of dicts, lists, tuples and named tuples of arrays) and a
threshold θ > 0::

    ‖g‖ = sqrt(Σ_leaves Σ_entries g²)          one norm over every leaf together
    g  <- g · min(1, θ / ‖g‖)                   the direction is kept, the length capped

so a gradient already within the threshold is returned unchanged, and a longer one is
rescaled to length exactly θ. The norm before clipping is returned too, so that the
caller can log it or notice an overflow (a non-finite norm).

Source: d2l.ai 9.5 "Gradient Clipping" (g <- min(1, θ/‖g‖) g); R. Pascanu, T. Mikolov
and Y. Bengio, "On the difficulty of training recurrent neural networks" (2013).

Example::

    >>> import jax.numpy as jnp
    >>> from manual import clip
    >>> clipped, norm = clip.clip_by_global_norm({"w": jnp.array([3.0, 4.0])}, 1.0)
    >>> float(norm), [round(float(v), 6) for v in clipped["w"]]
    (5.0, [0.6, 0.8])
"""

import jax.numpy as jnp
import numpy as np

from manual._checks import require_float
from manual.types import Array, ArrayLike

__all__ = ["clip_by_global_norm", "global_norm"]


def _map(fn, tree, path="grads"):
    """Apply ``fn(leaf, path)`` to every array leaf, rebuilding the containers."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return type(tree)((k, _map(fn, v, f"{path}[{k!r}]")) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a named tuple
        fields = zip(tree._fields, tree, strict=True)
        return type(tree)(*(_map(fn, v, f"{path}.{k}") for k, v in fields))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, v, f"{path}[{i}]") for i, v in enumerate(tree))
    return fn(tree, path)


def _leaves(tree):
    found = []
    _map(lambda leaf, path: found.append((path, leaf)), tree)
    return found


def global_norm(grads: object) -> Array:
    """‖g‖ over every leaf of ``grads``, in the widest floating dtype among them.

    Args:
      grads: a nest of dicts, lists, tuples and named tuples whose leaves are floating
        arrays (None entries are skipped).

    Returns:
      The scalar norm sqrt(Σ_leaves Σ_entries g²); float32 zero for an empty nest.
    """
    leaves = _leaves(grads)
    for path, leaf in leaves:
        require_float(path, leaf)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(*(leaf for _, leaf in leaves))
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(dtype))) for _, leaf in leaves))


def clip_by_global_norm(grads: object, max_norm: ArrayLike) -> tuple[object, Array]:
    """Rescale ``grads`` so that their global norm is at most ``max_norm``.

    Args:
      grads: a nest of dicts, lists, tuples and named tuples whose leaves are floating
        arrays (None entries are kept as they are).
      max_norm: θ > 0 (checked when it is a Python number; may be traced).

    Returns:
      (clipped, norm): ``clipped`` has the structure and leaf dtypes of ``grads``,
      each leaf times min(1, θ / ‖g‖); ``norm`` is ‖g‖ before clipping.
    """
    if isinstance(max_norm, (int, float, np.integer, np.floating)) and not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = global_norm(grads)
    # where, not min(1, θ/‖g‖): a zero gradient must not divide by zero
    factor = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1), 1)
    return _map(lambda leaf, path: leaf * factor.astype(leaf.dtype), grads), norm
