"""The function under check at another precision, every float it captures recast with it.

The shadow (float32) and truth (float64) runs and the float64 finite differences
evaluate the user's function at a precision it was not written in. Recasting only the
primals is not enough: a loss that closes over its data (``lambda p: loss(p, X, Y)``),
a module-level ``C = np.sqrt(2.0)``, a numpy scalar, all enter the traced program as
constants of the primals' dtype, and either break a dtype-strict function ("arguments
must share one floating dtype") or promote the result back.

``retyped(fun, layout, target)`` traces ``fun`` once, at the primals' own dtypes and
shapes, into a jaxpr, and returns a function of the same signature that evaluates that
jaxpr with every floating value in ``target``: inputs, the jaxpr's constants (whatever
Python object held them: closure cells, globals, numpy scalars), literals, and dtype
parameters (``convert_element_type``'s new dtype, ``dot_general``'s preferred type).
Calls (jit, custom_jvp/custom_vjp, remat) are inlined: the reference differentiates the
function's own math. Loops and conditionals (scan, while, cond) keep their primitive,
their bodies retyped the same way.

Example::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from suite.check.options import prepare
    >>> w = np.ones(3, np.float32)                      # captured, float32
    >>> f = lambda x: jnp.sum(x * w)
    >>> layout = prepare("check_vjp", (np.ones(3, np.float32),), ("x",))[0]
    >>> with jax.enable_x64(True):
    ...     g = retyped(f, layout, "float64")
    ...     g(jnp.ones(3, jnp.float64)).dtype
    dtype('float64')
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from suite.check.options import Layout, native_scope

__all__ = ["retyped", "retype", "needs_recast", "evaluate", "cached"]


def cached(factory: Callable) -> Callable:
    """lru_cache that falls back to no caching for unhashable arguments (the checker's
    programs and retyped functions are cached per function and layout with it)."""
    memo = functools.lru_cache(maxsize=64)(factory)

    @functools.wraps(factory)
    def get(*args):
        try:
            return memo(*args)
        except TypeError:
            return factory(*args)
    return get

# Call-like primitives whose body is evaluated in place (param holding the body).
_INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
           "core_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr",
           "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
           "custom_vjp_call_jaxpr": "fun_jaxpr"}


# Bit-level primitives run as traced, their float results cast after: random bits turned
# into a float32 uniform (jax.random inside the function) keep their meaning.
_AS_TRACED = {"bitcast_convert_type"}


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


_COMPLEX = {"float64": np.dtype("complex128"), "float32": np.dtype("complex64")}


def _dtype(dtype, target):
    if _is_float(dtype):
        return np.dtype(target)
    if jnp.issubdtype(dtype, jnp.complexfloating) and np.dtype(target).name in _COMPLEX:
        return _COMPLEX[np.dtype(target).name]  # complex values follow their real parts
    return dtype


def _cast(x, target):
    dtype = jnp.result_type(x)
    want = _dtype(dtype, target)
    if want == dtype:  # integers, booleans, PRNG keys (extended dtypes) pass as they are
        return x
    if isinstance(x, jax.core.Tracer):
        return jax.lax.convert_element_type(x, want)
    return jnp.asarray(np.asarray(x).astype(want))


def _param(p, target):
    if isinstance(p, jcore.ClosedJaxpr):
        return _retrace(p, target)
    if isinstance(p, jcore.Jaxpr):
        return _retrace(jcore.ClosedJaxpr(p, ()), target).jaxpr
    if isinstance(p, np.dtype):
        return _dtype(p, target)
    if isinstance(p, type) and issubclass(p, np.generic):
        return _dtype(np.dtype(p), target)
    if isinstance(p, jax.core.ShapedArray):
        return p.update(dtype=_dtype(p.dtype, target))
    if type(p) is tuple:  # a NamedTuple parameter (ConvDimensionNumbers) holds no dtype
        return tuple(_param(q, target) for q in p)
    return p


def _retrace(closed, target):
    specs = [jax.ShapeDtypeStruct(v.aval.shape, _dtype(v.aval.dtype, target))
             for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: evaluate(closed.jaxpr, closed.consts, a, target))(*specs)


def evaluate(jaxpr: Any, consts: Any, args: Any, target: str) -> list:
    """Evaluate ``jaxpr`` with every floating value cast to ``target``."""
    env = {}

    def read(v):
        if isinstance(v, jcore.Literal):
            return _cast(v.val, target)
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = _cast(c, target)
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = _cast(a, target)
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        body = eqn.params.get(_INLINE.get(eqn.primitive.name, ""))
        if body is not None:
            if isinstance(body, jcore.ClosedJaxpr):
                outs = evaluate(body.jaxpr, body.consts, invals, target)
            else:
                outs = evaluate(body, (), invals, target)
        elif eqn.primitive.name in _AS_TRACED:
            invals = [jax.lax.convert_element_type(x, v.aval.dtype)
                      if jnp.result_type(x) != v.aval.dtype else x
                      for x, v in zip(invals, eqn.invars, strict=True)]
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = [_cast(o, target) for o in (outs if eqn.primitive.multiple_results
                                                else [outs])]
        else:
            params = {k: _param(v, target) for k, v in eqn.params.items()}
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def needs_recast(layout: Layout, target: str) -> bool:
    """Whether some floating primal is not already in ``target``."""
    return any(lf.is_float and lf.dtype != np.dtype(target).name for lf in layout.leaves)


@cached
def _program(fun, layout):
    """fun traced at the primals' own dtypes: (closed jaxpr, output tree)."""
    specs = [jax.ShapeDtypeStruct(lf.shape, lf.dtype) for lf in layout.leaves]

    def flat(*leaves):
        floats = [x for x, lf in zip(leaves, layout.leaves, strict=True) if lf.is_float]
        ints = [x for x, lf in zip(leaves, layout.leaves, strict=True) if not lf.is_float]
        return fun(*layout.assemble(floats, ints))
    with native_scope(layout):
        closed, shape = jax.make_jaxpr(flat, return_shape=True)(*specs)
    return closed, jax.tree_util.tree_structure(shape)


@cached
def _retyped(fun, layout, target):
    closed, out_tree = _program(fun, layout)

    def at_target(*primals):
        leaves = jax.tree_util.tree_leaves(primals)
        out = evaluate(closed.jaxpr, closed.consts, leaves, target)
        return jax.tree_util.tree_unflatten(out_tree, out)
    at_target.__name__ = getattr(fun, "__name__", "fun")
    return at_target


def retyped(fun: Callable, layout: Layout, target: str) -> Callable:
    """``fun`` evaluated with every floating value (captured constants too) in ``target``.

    Returns ``fun`` itself when every floating primal is already in ``target``.
    """
    if not needs_recast(layout, target):
        return fun
    return _retyped(fun, Layout(layout.leaves, layout.treedefs), np.dtype(target).name)



def retype(fn: Callable, specs: Any, target: str) -> Callable:
    """``fn`` traced now at ``specs`` (a pytree of ShapeDtypeStruct, one per argument; in
    the x64 scope those dtypes need), as a function of the same arguments that evaluates
    its program with every floating value in ``target``."""
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*specs)
    out_tree = jax.tree_util.tree_structure(shape)

    def at_target(*args):
        out = evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), target)
        return jax.tree_util.tree_unflatten(out_tree, out)
    return at_target
