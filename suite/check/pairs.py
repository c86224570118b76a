"""Complex primals and outputs, checked as (real, imaginary) pairs under JAX's convention.

A complex leaf z of shape S is handed to the checker as the real array [Re z, Im z] of
shape S + (2,); the function becomes a real function of real pairs, and everything the
checker does for real code applies (autodiff, the float64 truth, finite differences
along random real directions, which move real and imaginary parts alike).

JAX's VJP of a complex function with cotangent c is the g for which, along any
direction v, d Re(Σ c·f)[v] = Re(Σ g·v) (so a holomorphic f gives g = c·f'(z), and
``jax.grad`` of a real f gives ∂f/∂a - i ∂f/∂b). In pairs, Re(c·f) = c_re·f_re - c_im·f_im
and Re(g·v) = g_re·v_re - g_im·v_im: the real VJP of the pair function with cotangent
conj(c) is conj(g). So yours, g = vjp(z, c), is read as the pair function's VJP
conj(g) at cotangent conj(c), and judged against autodiff of the pair function: it
passes exactly when yours follows JAX's convention (holomorphic or not), and a
conjugation slip fails.

Example::

    >>> import numpy as np
    >>> to_pairs(np.array([1 + 2j]))
    array([[1., 2.]])
    >>> from_pairs(np.array([[1.0, 2.0]]))
    array([1.+2.j])
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["has_complex", "to_pairs", "from_pairs", "as_pairs", "NOTE"]

NOTE = ("complex tensors are checked as (real, imaginary) pairs, under JAX's convention "
        "for complex VJPs: the last axis of each is [re, im]")


def _is_complex(x: Any) -> bool:
    try:
        return x is not None and jnp.issubdtype(jnp.result_type(x), jnp.complexfloating)
    except (TypeError, ValueError):  # not an array: prepare() names it
        return False


def has_complex(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is complex."""
    return any(_is_complex(x) for x in jax.tree_util.tree_leaves(tree))


def to_pairs(z: Any) -> Any:
    """[Re z, Im z] along a new last axis (numpy in, numpy out)."""
    xp = np if isinstance(z, (np.ndarray, np.generic)) else jnp
    return xp.stack([xp.real(z), xp.imag(z)], axis=-1)


def from_pairs(p: Any) -> Any:
    """The complex array of pairs [re, im] along the last axis."""
    if isinstance(p, (np.ndarray, np.generic)):
        return p[..., 0] + 1j * p[..., 1]
    return jax.lax.complex(p[..., 0], p[..., 1])


def _conj_pairs(p):
    return jnp.stack([p[..., 0], -p[..., 1]], axis=-1)


def _flags(tree):
    return jax.tree_util.tree_map(_is_complex, tree)


def _map(f, flags, tree):
    return jax.tree_util.tree_map(lambda c, x: x if x is None else f(c, x), flags, tree,
                                  is_leaf=lambda x: x is None)


def as_pairs(fun: Callable, deriv: Callable, primals: tuple, cotangent: Any,
             takes_cotangent: bool) -> tuple:
    """(fun, yours, primals, cotangent) with every complex leaf as real pairs.

    ``takes_cotangent``: yours is deriv(*primals, cotangent) (a VJP), else deriv(*primals)
    (a gradient: the cotangent 1).
    """
    in_flags = [_flags(p) for p in primals]
    out_flags = _flags(jax.eval_shape(fun, *primals))

    def unpack(prs):
        return tuple(_map(lambda c, x: from_pairs(x) if c else x, fl, p)
                     for fl, p in zip(in_flags, prs, strict=True))

    def pack_out(out):
        return _map(lambda c, o: to_pairs(o) if c else o, out_flags, out)

    def pack_grad(g):
        entries = g if len(primals) != 1 or (isinstance(g, (tuple, list)) and len(g) == 1
                                             and _same(g[0], primals[0])) else (g,)
        return tuple(None if e is None else
                     _map(lambda c, x: _conj_pairs(to_pairs(x)) if c else x, fl, e)
                     for fl, e in zip(in_flags, entries, strict=True))

    def fun_pairs(*prs):
        return pack_out(fun(*unpack(prs)))

    def yours_pairs(*args):
        if not takes_cotangent:
            return pack_grad(deriv(*unpack(args)))
        *prs, ct = args
        ct = _map(lambda c, t: from_pairs(_conj_pairs(t)) if c else t, out_flags, ct)
        return pack_grad(deriv(*unpack(prs), ct))

    primals_r = tuple(_map(lambda c, x: to_pairs(np.asarray(x)) if c else x, fl, p)
                      for fl, p in zip(in_flags, primals, strict=True))
    ct_r = None if cotangent is None else _map(
        lambda c, t: np.asarray(_conj_pairs(to_pairs(np.asarray(t)))) if c else t,
        out_flags, cotangent)
    fun_pairs.__name__ = getattr(fun, "__name__", "fun")
    return fun_pairs, yours_pairs, primals_r, ct_r


def _same(a, b):
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
