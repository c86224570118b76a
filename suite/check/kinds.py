"""The four kinds of check, each carrying its own behaviour.

A ``Kind`` says how yours is called, how autodiff computes the same derivative, what
scalar finite differences differentiate, how yours' result is read back into one
tensor per primal leaf, and what the report calls each tensor:

- ``VJP``: yours(*primals, cotangent) against ``jax.vjp``; linear in the cotangent.
- ``GRAD``: yours(*primals) against ``jax.grad`` of a scalar function.
- ``HESSIAN``: yours(x) against ``jax.hessian`` over ravel_pytree(x): one (P, P) tensor.
- ``HVP``: yours(x, v) against the forward-over-reverse H v; linear in v.

``linear`` kinds get the zero and batched checks; ``order`` (1 or 2) picks the
finite-difference scheme.

Example::

    >>> import jax.numpy as jnp
    >>> VJP.call(lambda x, g: 2 * g, (jnp.ones(2),), jnp.ones(2)).tolist()
    [2.0, 2.0]
    >>> (HESSIAN.order, HESSIAN.linear, HVP.linear)
    (2, False, True)
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from suite.check.options import Layout, Leaf, Mismatch, describe, expected_structure, match

__all__ = ["Kind", "VJP", "GRAD", "HESSIAN", "HVP", "TensorSlot"]


class TensorSlot:
    """A judged tensor's identity: display name, its primal leaf, argument and path."""

    def __init__(self, name: str, leaf: Leaf, argument: str, path: str):
        self.name, self.leaf, self.argument, self.path = name, leaf, argument, path


class Kind:
    """The behaviour shared by the kinds: per-leaf tensors, read through the layout."""

    name = ""
    linear = False
    order = 1

    @property
    def what(self) -> str:
        return f"your {self.name}"

    def __repr__(self) -> str:
        return self.name.upper()

    def call(self, deriv: Callable, primals: tuple, lin: Any) -> Any:
        raise NotImplementedError

    def autodiff(self, f: Callable, floats: tuple, lin: Any) -> tuple:
        """Autodiff of f(*floats) (one tuple entry per float leaf)."""
        raise NotImplementedError

    def read(self, layout: Layout, raw: Any) -> tuple:
        """Yours' raw result as one array per judged tensor."""
        return layout.pick(raw)

    def phi(self, out: Any, lin: Any) -> tuple:
        """(the scalar finite differences differentiate, the magnitude its rounding scales
        with) from fun's output: a scalar fun's own value."""
        value = jnp.asarray(out).reshape(())
        return value, jnp.abs(value)

    def locate(self, layout: Layout, raw: Any, names: tuple, arrays: list) -> tuple:
        """(the layout with yours' positions, notes) from the structure yours returned."""
        expected = expected_structure(layout, arrays)
        positions, int_positions, notes = match(layout, raw, expected, names, self.what)
        return Layout(layout.leaves, layout.treedefs, positions, int_positions), notes

    def slots(self, layout: Layout, names: tuple, display: list, dtype: str,
              refs: tuple) -> list:
        return [TensorSlot(nm, lf, names[lf.arg], lf.path)
                for nm, lf in zip(display, layout.floats, strict=True)]

    def wanted_dtypes(self, layout: Layout, dtype: str) -> list:
        return [lf.dtype for lf in layout.floats]

    def projection_weights(self, lin: Any, jv: Any) -> Any:
        """u in uᵀ(J v) (fast mode): the cotangent, or 1 for a scalar function."""
        return jnp.ones((), jnp.result_type(jv))


class _Vjp(Kind):
    name, linear, order = "vjp", True, 1

    def call(self, deriv, primals, lin):
        return deriv(*primals, lin)

    def autodiff(self, f, floats, lin):
        return jax.vjp(f, *floats)[1](lin)

    def phi(self, out, lin):
        pairs = list(zip(jax.tree_util.tree_leaves(lin), jax.tree_util.tree_leaves(out),
                         strict=True))
        value = sum(jnp.sum(c * o.astype(c.dtype)) for c, o in pairs)
        return value, sum(jnp.sum(jnp.abs(c * o.astype(c.dtype))) for c, o in pairs)

    def projection_weights(self, lin, jv):
        return lin


class _Grad(Kind):
    name, linear, order = "grad", False, 1

    def call(self, deriv, primals, lin):
        return deriv(*primals)

    def autodiff(self, f, floats, lin):
        return jax.grad(lambda fl: f(*fl))(tuple(floats))


class _Hvp(Kind):
    name, linear, order = "hvp", True, 2

    def call(self, deriv, primals, lin):
        return deriv(primals[0], lin)

    def autodiff(self, f, floats, lin):
        grad = jax.grad(lambda fl: f(*fl))
        return jax.jvp(grad, (tuple(floats),), (tuple(jax.tree_util.tree_leaves(lin)),))[1]


class _Hessian(Kind):
    name, linear, order = "hessian", False, 2

    def call(self, deriv, primals, lin):
        return deriv(primals[0])

    def autodiff(self, f, floats, lin):
        flat, unravel = ravel_pytree(tuple(floats))
        return (jax.hessian(lambda p: f(*unravel(p)))(flat),)

    def read(self, layout, raw):
        return (jnp.asarray(raw),)

    def locate(self, layout, raw, names, arrays):
        p = sum(math.prod(lf.shape) for lf in layout.floats)
        shape = tuple(np.shape(raw)) if not isinstance(raw, (tuple, list, dict)) else None
        if shape != (p, p):
            raise Mismatch(f"{self.what} returned {describe(raw)}; expected one ({p}, {p}) "
                           f"array (P = {p} parameters, in jax.flatten_util.ravel_pytree order)")
        return layout, []

    def slots(self, layout, names, display, dtype, refs):
        return [TensorSlot("hessian", Leaf(0, "", tuple(np.shape(refs[0])), dtype, True), "x",
                           "")]

    def wanted_dtypes(self, layout, dtype):
        return [dtype]


VJP, GRAD, HESSIAN, HVP = _Vjp(), _Grad(), _Hessian(), _Hvp()
