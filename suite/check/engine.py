"""The checker's engine: run yours, autodiff and finite differences; judge each tensor.

``check_vjp``, ``check_custom_vjp``, ``check_grad``, ``check_hessian`` and ``check_hvp``
each run the derivative under test ("yours") and JAX's autodiff of the same function
("autodiff") on the same inputs, in the inputs' own dtype, and return a
``CheckResult`` (suite/check/result.py) that names every tensor, its worst element and
the three values there, "yours", "autodiff" and "finite differences".

How a tensor is judged (the policy is suite/compare.py's, one table for the suite):

1. ``compare_leaf`` of yours against autodiff in the check's dtype, with the dtype's
   row of TOLERANCES widened by the rounding amplification α that autodiff itself
   shows on these inputs: α is the largest of autodiff's discrepancy when the inputs
   move by 2 ulps (rounding re-rolled), for float32/float16/bfloat16 its discrepancy
   from the float64 truth (autodiff on the inputs widened), and for float64 its float32
   shadow's discrepancy (autodiff on the inputs rounded to float32), in units of u.
   Yours may be 10x further from autodiff than that; the row's cap bounds it. In
   a low precision that cannot resolve a tensor at all (autodiff itself off by more
   than the cap allows), the tensor is reported, not judged.
2. For float32/float16/bfloat16 a tensor that misses autodiff passes if it is as close
   to the float64 truth as that same tolerance asks (yours may be the more accurate).
3. Elements outside the band are probed with float64 one-sided finite differences:
   where the left and right slopes disagree the element is at a kink (KINK, naming
   the element, both slopes and which one yours matched); where they agree and side
   with yours against autodiff, the element passes. The rest of the tensor is still
   judged.
4. A finite-difference witness along a random direction (float64, with its own error
   estimate from the spread of its Richardson steps) must agree with yours wherever
   it agrees with autodiff.

Extra checks (first-order checks): batched (yours under ``vmap`` over two cotangents
equals the two calls), determinism (two runs identical), zero (a zero cotangent gives
zeros), output dtype (each cotangent has its primal's dtype). ``mode="fast"`` judges
one projection uᵀJv first and runs the full check only if it disagrees.

Nothing here changes global JAX settings: float64 work runs inside
``jax.enable_x64(True)`` scopes, the user's code in float32 keeps the caller's x64 and
rank-promotion settings.

Example::

    >>> import jax.numpy as jnp, numpy as np
    >>> from suite.check import check_vjp
    >>> f = lambda x, w: jnp.tanh(x @ w)
    >>> def f_vjp(x, w, dy):
    ...     dz = dy * (1 - jnp.tanh(x @ w) ** 2)
    ...     return dz @ w.T, x.T @ dz
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    >>> check_vjp(f, f_vjp, x, w).status
    <Status.PASS: 'PASS'>
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check.result import CheckOutcome, CheckResult, Kink, TensorResult, Witness
from suite.results import Status

__all__ = ["check_vjp", "check_custom_vjp", "check_grad", "check_hessian", "check_hvp",
           "OPTIONS", "RECORDERS"]

# Keyword options every check_* accepts (a few apply to first-order checks only).
OPTIONS = {
    "names": "argument names for the report (default: from fun's signature)",
    "name": "a label for this check (default: fun's name)",
    "mode": '"full" (default) or "fast": one projection uᵀJv, the full check if it fails',
    "fd": "run the float64 finite-difference witness and element probes (default True)",
    "batched": "check yours under vmap over cotangents (default True)",
    "determinism": "run yours twice and require identical results (default True)",
    "zero": "require zeros for a zero cotangent (default True)",
    "dtype": "require each result to have its primal's dtype (default True)",
    "jit": "jit-compile yours (default True; falls back to eager if it cannot be traced)",
    "max_probes": "elements probed by one-sided finite differences per check (default 32)",
}
# Lists that collect every CheckResult a public check_* returns (suite.checkfile pushes one
# while a user's file runs, for ``backprop-suite check``).
RECORDERS: list = []

_DEFAULTS = dict(names=None, name=None, mode="full", fd=True, batched=True, determinism=True,
                 zero=True, dtype=True, jit=True, max_probes=32)
_PERTURB_ULPS = 2.0  # the input perturbation that re-rolls rounding (see module doc)


class _Mismatch(Exception):
    """The derivative under test returned the wrong structure or shape (an ERROR)."""


def _is_none(x):
    return x is None


# --- arguments -------------------------------------------------------------------------

def _options(function, options):
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"{function}: unknown option {unknown[0]!r}; known: {sorted(_DEFAULTS)}")
    opts = dict(_DEFAULTS, **options)
    if opts["mode"] not in ("full", "fast"):
        raise ValueError(f"{function}: mode must be 'full' or 'fast', got {opts['mode']!r}")
    if not isinstance(opts["max_probes"], int) or opts["max_probes"] < 0:
        raise ValueError(f"{function}: max_probes must be a non-negative int, "
                         f"got {opts['max_probes']!r}")
    return opts


def _require_callable(function, what, f):
    if not callable(f):
        raise ValueError(f"{function}: {what} must be callable, got {type(f).__name__}")


def _require_seed(function, seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{function}: seed must be an int, got {seed!r}")


def _arg_names(fun, n, names, function):
    if names is not None:
        names = tuple(names)
        if len(names) != n or not all(isinstance(s, str) for s in names):
            raise ValueError(f"{function}: names must be {n} strings (one per primal), "
                             f"got {names!r}")
        return names
    target = getattr(fun, "fun", fun)  # a custom_vjp names its primal function's arguments
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    out = []
    for i in range(n):
        p = params[i] if i < len(params) else None
        ok = p is not None and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        out.append(p.name if ok else f"arg{i}")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    arg: int
    path: str
    shape: tuple
    dtype: str
    is_float: bool


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The static shape of one check: primal leaves and how yours is read (hashable)."""

    leaves: tuple
    treedefs: tuple
    positions: tuple = ()  # per float leaf: index in yours' flattened result, -1: zeros

    @property
    def floats(self):
        return tuple(leaf for leaf in self.leaves if leaf.is_float)

    def assemble(self, floats, ints):
        it_f, it_i = iter(floats), iter(ints)
        per_arg = [[] for _ in self.treedefs]
        for leaf in self.leaves:
            per_arg[leaf.arg].append(next(it_f) if leaf.is_float else next(it_i))
        return tuple(jax.tree_util.tree_unflatten(td, lv)
                     for td, lv in zip(self.treedefs, per_arg, strict=True))

    def pick(self, raw):
        flat = jax.tree_util.tree_flatten(raw, is_leaf=_is_none)[0]
        return tuple(jnp.zeros(leaf.shape, leaf.dtype) if pos < 0 else jnp.asarray(flat[pos])
                     for leaf, pos in zip(self.floats, self.positions, strict=True))

    def shapes_only(self):
        """The layout without dtypes or positions: what autodiff and finite differences need."""
        leaves = tuple(dataclasses.replace(lf, dtype="") for lf in self.leaves)
        return _Layout(leaves, self.treedefs)

    def unflat(self, flat):
        out, start = [], 0
        for leaf in self.floats:
            size = math.prod(leaf.shape)
            out.append(flat[start:start + size].reshape(leaf.shape))
            start += size
        return tuple(out)


def _leaf_array(function, where, leaf):
    if isinstance(leaf, jax.core.Tracer):
        raise ValueError(f"{function}: {where} is a traced value; call the checker outside "
                         "jit/vmap")
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        arr, weak = leaf, False
    elif isinstance(leaf, (bool, int, float)):
        arr, weak = np.asarray(leaf), isinstance(leaf, float)
    else:
        raise ValueError(f"{function}: {where} must be an array or a number, got "
                         f"{type(leaf).__name__}")
    dtype = np.dtype(arr.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"{function}: {where} is complex ({dtype}); complex derivatives are "
                         "not supported")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == np.bool_):
        raise ValueError(f"{function}: {where} has dtype {dtype}, not a number")
    return arr, weak


def _prepare(function, primals, names, *, ints_allowed=True):
    """Validate and flatten the primals: (layout, host arrays, check dtype, display names)."""
    if not primals:
        raise ValueError(f"{function}: needs at least one primal")
    raw, leaves, treedefs = [], [], []
    for i, p in enumerate(primals):
        flat, treedef = jax.tree_util.tree_flatten_with_path(p)
        treedefs.append(treedef)
        for path, leaf in flat:
            where = f"primal {i} ({names[i]}{jax.tree_util.keystr(path)})"
            arr, weak = _leaf_array(function, where, leaf)
            is_float = jnp.issubdtype(arr.dtype, jnp.floating)
            if not is_float and not ints_allowed:
                raise ValueError(f"{function}: {where} is {arr.dtype}; this check needs floats")
            raw.append((arr, weak))
            leaves.append(_Leaf(i, jax.tree_util.keystr(path), tuple(np.shape(arr)),
                                np.dtype(arr.dtype).name, is_float))
    strong = [np.dtype(a.dtype) for (a, weak), lf in zip(raw, leaves, strict=True)
              if lf.is_float and not weak]
    if not any(lf.is_float for lf in leaves):
        raise ValueError(f"{function}: no floating-point primal, nothing to differentiate")
    # the least precise floating dtype decides the tolerance (mixed precision is judged as
    # its weakest part); Python floats take it too
    dtype = max(strong, key=lambda t: float(jnp.finfo(t).eps)) if strong else np.dtype("float64")
    try:
        cmp.tolerance(dtype)
    except ValueError as err:
        raise ValueError(f"{function}: primals of dtype {dtype.name}: {err}") from None
    arrays = [np.asarray(arr, dtype) if weak else arr for arr, weak in raw]
    leaves = [dataclasses.replace(lf, dtype=dtype.name) if w else lf
              for lf, (_, w) in zip(leaves, raw, strict=True)]
    display = [f"{names[lf.arg]}{lf.path}" for lf in leaves if lf.is_float]
    return _Layout(tuple(leaves), tuple(treedefs)), arrays, dtype.name, display


def _native_scope(layout):
    """x64 as the caller set it, unless a float64 primal needs it (then scoped on)."""
    wants = any(lf.dtype == "float64" for lf in layout.leaves)
    return jax.enable_x64(True) if wants else contextlib.nullcontext()


def _split(layout, arrays):
    pairs = list(zip(arrays, layout.leaves, strict=True))
    floats = tuple(jnp.asarray(a) for a, lf in pairs if lf.is_float)
    ints = tuple(jnp.asarray(a) for a, lf in pairs if not lf.is_float)
    return floats, ints


class _Shape:
    """Prints as float32[4, 16]: a readable stand-in for a leaf in structure messages."""

    def __init__(self, x):
        dtype = getattr(x, "dtype", None)
        name = np.dtype(dtype).name if dtype is not None else type(x).__name__
        self.text = "None" if x is None else f"{name}{list(np.shape(x))}"

    def __repr__(self):
        return self.text


def _describe(tree):
    return repr(jax.tree_util.tree_map(_Shape, tree, is_leaf=_is_none))


def _expected(layout, names, arrays):
    """What yours must return: per primal its tree, None at integer leaves."""
    per_arg = [[] for _ in layout.treedefs]
    for leaf, arr in zip(layout.leaves, arrays, strict=True):
        per_arg[leaf.arg].append(arr if leaf.is_float else None)
    return tuple(jax.tree_util.tree_unflatten(td, lv)
                 for td, lv in zip(layout.treedefs, per_arg, strict=True))


def _match(layout, raw, expected, names, what):
    """Positions of the float leaves in yours' flattened result, or _Mismatch."""
    n = len(expected)

    def mismatch(why):
        shown = ", ".join(f"{nm}: {_describe(e)}" for nm, e in zip(names, expected, strict=True))
        got = _describe(raw)
        raise _Mismatch(f"{what} returned a result that does not match the primals ({why})\n"
                        f"  expected: ({shown}){'  [a bare value is accepted]' if n == 1 else ''}\n"
                        f"  got:      {got}\n"
                        "  (one entry per primal, each shaped like its primal; None at integer "
                        "leaves)")

    entries = raw
    single_ok = (isinstance(raw, (tuple, list)) and len(raw) == 1
                 and _same_structure(raw[0], expected[0]))
    if n == 1 and not single_ok:
        entries = (raw,)
    if not isinstance(entries, (tuple, list)) or len(entries) != n:
        count = len(entries) if isinstance(entries, (tuple, list)) else "a single value"
        mismatch(f"{count} entries for {n} primals")
    positions, notes, offset = [], [], 0
    for i, (entry, exp) in enumerate(zip(entries, expected, strict=True)):
        e_leaves, e_def = jax.tree_util.tree_flatten(entry, is_leaf=_is_none)
        x_leaves, x_def = jax.tree_util.tree_flatten(exp, is_leaf=_is_none)
        if entry is None:
            positions += [-1] * sum(x is not None for x in x_leaves)
            if any(x is not None for x in x_leaves):
                notes.append(f"{what} returned None for {names[i]}: taken as zeros")
            offset += 1
            continue
        if e_def != x_def:
            mismatch(f"the structure of {names[i]}'s entry differs")
        for j, (got, want) in enumerate(zip(e_leaves, x_leaves, strict=True)):
            if want is None:
                continue
            if got is None or jnp.result_type(got) == jax.dtypes.float0:
                positions.append(-1)
                notes.append(f"{what} returned {'None' if got is None else 'float0'} for "
                             f"a floating leaf of {names[i]}: taken as zeros")
            elif tuple(np.shape(got)) != tuple(np.shape(want)):
                mismatch(f"{names[i]}: shape {list(np.shape(got))}, expected "
                         f"{list(np.shape(want))}")
            else:
                positions.append(offset + j)
        offset += len(e_leaves)
    return tuple(positions), notes


def _same_structure(a, b):
    return (jax.tree_util.tree_structure(a, is_leaf=_is_none)
            == jax.tree_util.tree_structure(b, is_leaf=_is_none))


# --- what is checked: one small adapter per kind -----------------------------------------

@dataclasses.dataclass(frozen=True)
class _Kind:
    """How yours, autodiff and the scalar for finite differences are computed.

    ``linear``: the derivative is linear in an extra argument (the cotangent of a VJP,
    the vector of an HVP), so zero and batched checks apply. ``order``: 1 or 2.
    """

    name: str
    linear: bool
    order: int


VJP, GRAD, HESSIAN, HVP = (_Kind("vjp", True, 1), _Kind("grad", False, 1),
                           _Kind("hessian", False, 2), _Kind("hvp", True, 2))


def _call_yours(kind, deriv, primals, lin):
    if kind is VJP:
        return deriv(*primals, lin)
    if kind is GRAD:
        return deriv(*primals)
    if kind is HVP:
        return deriv(primals[0], lin)
    return deriv(primals[0])


def _autodiff(kind, fun, layout, floats, ints, lin):
    """Autodiff of fun with respect to the float leaves (a tuple, one per float leaf)."""
    def f(*fl):
        return fun(*layout.assemble(fl, ints))
    if kind is VJP:
        return jax.vjp(f, *floats)[1](lin)
    if kind is GRAD:
        return jax.grad(lambda fl: f(*fl))(tuple(floats))
    if kind is HVP:
        grad = jax.grad(lambda fl: f(*fl))
        return jax.jvp(grad, (tuple(floats),), (tuple(jax.tree_util.tree_leaves(lin)),))[1]
    flat, unravel = ravel_pytree(tuple(floats))
    return (jax.hessian(lambda p: f(*unravel(p)))(flat),)


def _yours_flat(kind, deriv, layout, floats, ints, lin):
    raw = _call_yours(kind, deriv, layout.assemble(floats, ints), lin)
    if kind is HESSIAN:
        return (jnp.asarray(raw),)
    return layout.pick(raw)


def _yours_batched(kind, deriv, layout, floats, ints, lin, batch, batched):
    """Yours (and, if ``batched``, yours under vmap over a stack of linear arguments)."""
    def yours(lin_):
        return _yours_flat(kind, deriv, layout, floats, ints, lin_)
    out = {"yours": yours(lin)}
    if batched:
        out["batched"] = jax.vmap(yours)(batch)
    return out


def _phi(kind, fun, layout, flat, ints, lin):
    """The scalar finite differences differentiate, and the magnitude its rounding scales with."""
    out = fun(*layout.assemble(layout.unflat(flat), ints))
    if kind is VJP:
        pairs = list(zip(jax.tree_util.tree_leaves(lin), jax.tree_util.tree_leaves(out),
                         strict=True))
        value = sum(jnp.sum(c * o.astype(c.dtype)) for c, o in pairs)
        return value, sum(jnp.sum(jnp.abs(c * o.astype(c.dtype))) for c, o in pairs)
    return jnp.asarray(out).reshape(()), jnp.abs(jnp.asarray(out).reshape(()))


def _map(f, xs, vectorize):
    return jax.vmap(f)(xs) if vectorize else jax.lax.map(f, xs)


# Finite-difference rows are vmapped together while the copies of the point stay below this
# many elements (~400 MB in float64); beyond it, rows run one after another (each row's
# seven points still vmapped), so a large function is not evaluated hundreds of times at
# once.
_VMAP_ELEMENTS = 50_000_000


def _fd_values(kind, fun, layout, floats, ints, lin, dense, coef, idx, steps, vectorize):
    # vectorize: 2 vmaps rows and points, 1 maps rows in sequence, 0 maps everything
    """float64 evaluations of the scalar φ for finite differences, in one program.

    Row r evaluates φ(x + c·coef_r·d_r + c·steps_r·e_{idx_r}) for c in OFFSETS, where
    d_r is ``dense`` itself (one (P,) direction shared by all rows: first order) or its
    row r ((m, P): second order). A row is thus the witness direction or one element (a
    probe), and a single vmapped copy of ``fun`` serves both.
    """
    flat = jnp.concatenate([f.ravel() for f in floats])
    offsets = jnp.asarray(fdiff.OFFSETS, flat.dtype)
    phi_kind = kind if kind.order == 1 else GRAD
    shared = dense.ndim == 1

    def row(args):
        d, a, i, h = (dense, *args) if shared else args
        def point(c):
            return _phi(phi_kind, fun, layout, (flat + c * a * d).at[i].add(c * h), ints, lin)[0]
        return _map(point, offsets, vectorize >= 1)
    rows = (coef, idx, steps) if shared else (dense, coef, idx, steps)
    values = _map(row, rows, vectorize >= 2)
    return values, _phi(phi_kind, fun, layout, flat, ints, lin)[1]


def _cached(factory):
    """lru_cache that falls back to no caching for unhashable arguments."""
    cached = functools.lru_cache(maxsize=64)(factory)

    @functools.wraps(factory)
    def get(*args):
        try:
            return cached(*args)
        except TypeError:
            return factory(*args)
    return get


# jit-compiled programs, cached per (kind, function, layout): checking the same code on new
# inputs of the same shapes compiles nothing again (jit caches by shapes, dtypes and the
# x64 scope). Autodiff and finite differences are keyed without dtypes, so a float32
# check's float64 truth and a float64 check of the same function share one compile.

@_cached
def _yours_program(kind, deriv, layout):
    plain = functools.partial(_yours_batched, kind, deriv, layout)
    return jax.jit(plain, static_argnames="batched"), plain


@_cached
def _autodiff_program(kind, fun, shape_layout):
    return jax.jit(functools.partial(_autodiff, kind, fun, shape_layout))


@_cached
def _fd_program(kind, fun, shape_layout):
    return jax.jit(functools.partial(_fd_values, kind, fun, shape_layout),
                   static_argnames="vectorize")


@_cached
def _fast_program(kind, fun, deriv, layout):
    return jax.jit(functools.partial(_fast, kind, fun, deriv, layout))


def _fast(kind, fun, deriv, layout, floats, ints, lin, vdir):
    """uᵀ(J v) by forward autodiff against (Jᵀu)ᵀ v from yours, and ||Jᵀu||."""
    yours = _yours_flat(kind, deriv, layout, floats, ints, lin)
    def f(*fl):
        return fun(*layout.assemble(fl, ints))
    jv = jax.jvp(f, tuple(floats), tuple(vdir))[1]
    a = sum(jnp.vdot(y.astype(v.dtype), v) for y, v in zip(yours, vdir, strict=True))
    u = lin if kind is VJP else jnp.ones((), jnp.result_type(jv))
    b = sum(jnp.vdot(ui, ji.astype(ui.dtype))
            for ui, ji in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(jv),
                              strict=True))
    n = jnp.sqrt(sum(jnp.vdot(y, y).real for y in yours))
    return a, b, n


# --- running -------------------------------------------------------------------------

def _host(out):
    """Program outputs on the host as numpy arrays (an exception value is kept as is)."""
    return {k: v if k.endswith("_error") else jax.tree_util.tree_map(np.asarray, v)
            for k, v in out.items()}


def _f64(x):
    return np.asarray(x).astype(np.float64)


def _internal_paths():
    import jaxlib
    return (os.path.dirname(jax.__file__), os.path.dirname(jaxlib.__file__),
            os.path.dirname(np.__file__), __file__, fdiff.__file__, cmp.__file__,
            contextlib.__file__, functools.__file__)


def _user_frame(err):
    """'at file:line in function: code' for the innermost frame of the user's own code."""
    internal = _internal_paths()
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(internal)]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def _first_line(err):
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:500]


def _error_result(function, name, dtype, message, err=None, notes=()):
    tb = "".join(traceback.format_exception(err)) if err is not None else ""
    return CheckResult(function=function, name=name, status=Status.ERROR, dtype=dtype,
                       message=message, notes=list(notes), traceback=tb)


def _random_like(rng, struct, dtype=None):
    return jax.tree_util.tree_map(
        lambda s: np.asarray(rng.standard_normal(s.shape), dtype or s.dtype), struct)


def _perturb(rng, x, dtype, sign):
    """x·(1 + sign·2u·r) per element (r = ±1 drawn from rng), rounded back to x's dtype."""
    u = cmp.unit_roundoff(dtype)
    xf = _f64(x)
    r = rng.choice([-1.0, 1.0], size=xf.shape)
    return np.asarray(xf * (1.0 + sign * _PERTURB_ULPS * u * r)).astype(np.asarray(x).dtype)


@dataclasses.dataclass
class _Run:
    """The state of one check as it goes (host arrays and decisions)."""

    function: str
    name: str
    kind: _Kind
    fun: Callable
    deriv: Callable
    layout: _Layout
    arrays: list
    dtype: str
    display: list
    names: tuple
    opts: dict
    seed: int
    lin: Any = None          # cotangent (vjp) or vector (hvp), host arrays in its dtype
    lin2: Any = None
    notes: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    eager: bool = False


def _run_yours(run, floats, ints, lin, batch=None):
    """Yours in the check's dtype (under vmap over ``batch`` too, if given).

    Falls back to eager (op-by-op) execution when yours cannot be traced; an exception
    under vmap only is returned as ``batched_error`` (the batched check's ERROR).
    """
    jitted, plain = _yours_program(run.kind, run.deriv, run.layout)
    call = plain if run.eager else jitted
    scope = jax.disable_jit() if run.eager else contextlib.nullcontext()
    if batch is None:
        with scope:
            return _host(call(floats, ints, lin, None, batched=False))
    try:
        with scope:
            return _host(call(floats, ints, lin, batch, batched=True))
    except Exception as err:
        with scope:
            out = _host(call(floats, ints, lin, None, batched=False))
        out["batched_error"] = err
        return out


def _run_autodiff(run, floats, ints, lin):
    program = _autodiff_program(run.kind, run.fun, run.layout.shapes_only())
    return _host({"autodiff": program(floats, ints, lin)})["autodiff"]


def _perturbed(run, floats, lin, sign):
    """Float leaves (and the linear argument) times (1 ± 2u r), r = ±1 per element, rounded
    back: the same r for both signs, so the symmetric difference cancels the first-order
    change of the result and leaves the re-rolled rounding."""
    rng = np.random.default_rng([run.seed, 3])
    pf = tuple(jnp.asarray(_perturb(rng, f, run.dtype, sign)) for f in floats)
    plin = None if lin is None else jax.tree_util.tree_map(
        lambda c: jnp.asarray(_perturb(rng, c, run.dtype, sign)), lin)
    return pf, plin


def _structure(run, floats, ints, lin):
    """Trace yours once for its structure (eagerly if it cannot be traced)."""
    what = {"vjp": "your vjp", "grad": "your grad", "hessian": "your hessian",
            "hvp": "your hvp"}[run.kind.name]
    def call(*fl):
        return _call_yours(run.kind, run.deriv, run.layout.assemble(fl, ints), lin)
    try:
        raw = jax.eval_shape(call, *floats)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
            jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError) as err:
        run.eager = True
        run.notes.append(f"{what} cannot be traced ({_first_line(err)}); it was run eagerly "
                         "(op by op)")
        raw = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), call(*floats))
    if run.kind is HESSIAN:
        p = sum(math.prod(lf.shape) for lf in run.layout.floats)
        shape = tuple(np.shape(raw)) if not isinstance(raw, (tuple, list, dict)) else None
        if shape != (p, p):
            raise _Mismatch(f"{what} returned {_describe(raw)}; expected one ({p}, {p}) array "
                            f"(P = {p} parameters, in jax.flatten_util.ravel_pytree order)")
        return raw
    expected = _expected(run.layout, run.names, run.arrays)
    positions, notes = _match(run.layout, raw, expected, run.names, what)
    run.notes += notes
    run.layout = dataclasses.replace(run.layout, positions=positions)
    return raw


def _check(run: _Run) -> CheckResult:
    start = time.perf_counter()
    try:
        result = _check_inner(run)
    except _Mismatch as err:
        result = _error_result(run.function, run.name, run.dtype, str(err), notes=run.notes)
    except Exception as err:
        result = _error_result(run.function, run.name, run.dtype,
                               f"raised {_first_line(err)}{_user_frame(err)}", err, run.notes)
    result.seconds = time.perf_counter() - start
    return result


def _check_inner(run):
    if not run.opts["jit"]:
        run.eager = True
    with _native_scope(run.layout):
        floats, ints = _split(run.layout, run.arrays)
        lin = None if run.lin is None else jax.tree_util.tree_map(jnp.asarray, run.lin)
        lin2 = None if run.lin2 is None else jax.tree_util.tree_map(jnp.asarray, run.lin2)
        _structure(run, floats, ints, lin)
        if run.opts["mode"] == "fast" and run.kind.order == 1:
            fast = _run_fast(run, floats, ints, lin)
            if fast is not None:
                return fast
        native = _native_runs(run, floats, ints, lin, lin2)
    return _judge(run, native)


def _native_runs(run, floats, ints, lin, lin2):
    """Every run in the check's dtype: one compile of yours, one of autodiff, then calls."""
    opts, linear = run.opts, run.kind.linear
    batch = None
    if linear and opts["batched"] and run.eager:  # vmap traces: untraceable code cannot run
        opts["batched"] = False
        run.notes.append("the batched check was skipped: yours runs eagerly (op by op)")
    if linear and opts["batched"]:
        batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), lin, lin2)
    out = _run_yours(run, floats, ints, lin, batch)
    out["autodiff"] = _run_autodiff(run, floats, ints, lin)
    if opts["determinism"]:
        out["again"] = _run_yours(run, floats, ints, lin)["yours"]
    if linear and opts["zero"]:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, lin)
        out["zero"] = _run_yours(run, floats, ints, zeros)["yours"]
    if batch is not None and "batched_error" not in out:
        out["second"] = _run_yours(run, floats, ints, lin2)["yours"]
    # autodiff on inputs moved by ±2 ulps: how much it amplifies its own rounding
    out["perturbed"] = []
    for sign in (1.0, -1.0):
        pf, plin = _perturbed(run, floats, lin, sign)
        out["perturbed"].append(_run_autodiff(run, pf, ints, plin))
    if run.dtype == "float64":  # autodiff's float32 shadow: the function's own conditioning
        def narrow(x):
            return jnp.asarray(np.asarray(x).astype(np.float32))
        out["shadow"] = _run_autodiff(run, tuple(narrow(f) for f in floats), ints,
                                      None if lin is None else jax.tree_util.tree_map(narrow, lin))
    return out


def _run_fast(run, floats, ints, lin):
    fast = _fast_program(run.kind, run.fun, run.deriv, run.layout)
    vdir = fdiff.random_direction(run.seed + 1, floats)
    scope = jax.disable_jit() if run.eager else contextlib.nullcontext()
    with scope:
        a, b, n = (float(t) for t in fast(floats, ints, lin, vdir))
    tol = cmp.tolerance(run.dtype).normwise
    scale = max(n, abs(b), np.finfo(np.float64).tiny)
    error = abs(a - b) / scale
    if math.isfinite(error) and error <= tol:
        tensors = [TensorResult(name=nm, argument=run.names[lf.arg], path=lf.path, shape=lf.shape,
                                dtype=lf.dtype, status=Status.PASS, tolerance=tol)
                   for nm, lf in zip(run.display, run.layout.floats, strict=True)]
        notes = run.notes + [f"fast mode: one projection uᵀJv checked (yours {a:.8g}, autodiff "
                             f"{b:.8g}, relative error {error:.1e}, tolerance {tol:.0e}); "
                             "elements, extra checks and finite differences were not run"]
        return CheckResult(function=run.function, name=run.name, status=Status.PASS,
                           dtype=run.dtype, mode="fast", tensors=tensors, notes=notes)
    run.notes.append(f"fast mode's projection uᵀJv disagreed (yours {a:.8g}, autodiff {b:.8g}, "
                     f"relative error {error:.1e} > {tol:.0e}); the full check was run")
    run.opts["mode"] = "full"
    return None


# --- judging -------------------------------------------------------------------------

def _widen(run, ref, ref_pert, truth, shadow=None):
    """(amplification, tolerance, needed factor) for one tensor.

    α is the largest of (a) the symmetric second difference of autodiff under a ±2-ulp
    input perturbation, ref(x+δ) - 2 ref(x) + ref(x-δ): the change of the result cancels
    to first order and three independent roundings remain (norm √6 times one); (b) for
    low precision, autodiff's distance from the float64 truth on the same inputs; (c) for
    float64, autodiff's float32 shadow (the inputs rounded to float32) against ref, in
    float32 units. (a) alone can miss: a compiler that rounds the perturbed inputs back to
    the same intermediates (seen with XLA on a GPU) re-rolls no rounding at all, while
    (c) measures how much the function amplifies a rounding of its inputs, whatever the
    device.
    """
    plus, minus = ref_pert
    second = plus + minus - ref  # = ref + (plus - 2 ref + minus): compared with ref below
    alphas = [cmp.amplification(second, ref, run.dtype) / math.sqrt(6.0)]
    if truth is not None:
        alphas.append(cmp.amplification(ref, truth, run.dtype))
    if shadow is not None:
        alphas.append(cmp.amplification(shadow, ref, "float32"))
    finite = [a for a in alphas if math.isfinite(a)]
    alpha = max(finite) if finite else math.nan
    factor, needed = cmp.widening(run.dtype, alpha)
    return alpha, cmp.tolerance(run.dtype).widened(factor), needed


def _probe_plan(run, yours, refs):
    """Flat float indices to probe: the worst element of each tensor, then the elements
    furthest outside the table's band (the widened band is a subset)."""
    tol = cmp.tolerance(run.dtype)
    worst, suspects, offset = [], [], 0
    for k, (y, a) in enumerate(zip(yours, refs, strict=True)):
        y, a = _f64(y), _f64(a)
        err = np.abs(y - a).ravel()
        if err.size:
            worst.append((k, int(np.argmax(err)), offset + int(np.argmax(err))))
            excess = err / np.maximum(cmp.band(a, tol).ravel(), np.finfo(np.float64).tiny)
            for i in np.flatnonzero(excess > 1.0):
                suspects.append((float(excess[i]), k, int(i), offset + int(i)))
        offset += err.size
    suspects.sort(reverse=True)
    plan = list(worst)
    seen = {g for _, _, g in plan}
    for _, k, i, g in suspects:
        if len(plan) >= len(worst) + run.opts["max_probes"]:
            break
        if g not in seen:
            plan.append((k, i, g))
            seen.add(g)
    return plan, len(suspects)


def _judge(run, native):
    kind, dtype = run.kind, run.dtype
    is_low = dtype != "float64"
    yours, refs = native["yours"], native["autodiff"]
    with jax.enable_x64(True):  # the float64 part: truth and finite differences
        pairs = list(zip(run.arrays, run.layout.leaves, strict=True))
        floats64 = tuple(jnp.asarray(_f64(a)) for a, lf in pairs if lf.is_float)
        ints = tuple(jnp.asarray(a) for a, lf in pairs if not lf.is_float)
        lin64 = None if run.lin is None else jax.tree_util.tree_map(
            lambda c: jnp.asarray(_f64(c)), run.lin)
        truths = _run_autodiff(run, floats64, ints, lin64) if is_low else (None,) * len(refs)
        tout = _run_fd(run, floats64, ints, lin64, yours, refs) if run.opts["fd"] else {}
    tensors, witness_terms, witness_seen = [], [], []
    names = ["hessian"] if kind is HESSIAN else run.display
    leaves = ([_Leaf(0, "", np.shape(refs[0]), dtype, True)] if kind is HESSIAN
              else list(run.layout.floats))
    for k, (nm, lf) in enumerate(zip(names, leaves, strict=True)):
        pert = [_f64(p[k]) for p in native["perturbed"]]
        shadow = None if "shadow" not in native else _f64(native["shadow"][k])
        t, term, seen = _judge_tensor(run, k, nm, lf, yours[k], refs[k], pert,
                                      None if truths[k] is None else _f64(truths[k]), tout,
                                      shadow)
        tensors.append(t)
        witness_terms.append(term)
        witness_seen.append(seen)
    if kind is HESSIAN and tensors[0].worst_index is not None:
        i, j = tensors[0].worst_index
        tensors[0].message = (tensors[0].message + " " if tensors[0].message else "") + (
            f"(element [{i}, {j}] is ∂²f / ∂{_flat_name(run, i)} ∂{_flat_name(run, j)})")
    _extra_checks(run, native, tensors)
    witness = _witness(run, witness_seen, refs, tout, witness_terms) if "dir" in tout else None
    return _result(run, tensors, witness)


def _flat_name(run, g):
    offset = 0
    for nm, lf in zip(run.display, run.layout.floats, strict=True):
        size = math.prod(lf.shape)
        if g < offset + size:
            idx = np.unravel_index(g - offset, lf.shape) if lf.shape else ()
            return f"{nm}[{', '.join(str(int(i)) for i in idx)}]" if lf.shape else nm
        offset += size
    return f"[{g}]"


def _run_fd(run, floats64, ints, lin64, yours, refs):
    """The float64 finite differences: witness direction(s) and element probes."""
    x64_flat = np.concatenate([_f64(a).ravel() for a in floats64])
    p = x64_flat.size
    if run.kind.order == 1:
        plan, _ = _probe_plan(run, yours, refs)
        rows = len(run.layout.floats) + run.opts["max_probes"] + 1
        rows = max(rows, len(plan) + 1)
        h = fdiff.step(np.float64, 1)
        vflat = np.concatenate([_f64(v).ravel() for v in
                                fdiff.random_direction(run.seed + 1, floats64)])
        dense = fdiff.exact_step(x64_flat, h * vflat)  # x + c·dense is exact
        sizes = np.cumsum([math.prod(lf.shape) for lf in run.layout.floats])[:-1]
        vdir = [d.reshape(lf.shape) for d, lf in zip(np.split(dense / h, sizes),
                                                      run.layout.floats, strict=True)]
        # row 0: the witness direction; rows 1..: one element each (padding repeats x)
        coef, idx, steps = np.zeros(rows), np.zeros(rows, np.int64), np.zeros(rows)
        coef[0] = 1.0
        for r, (_, _, g) in enumerate(plan, start=1):
            idx[r] = g
            steps[r] = fdiff.exact_step(x64_flat[g], fdiff.probe_step(np.float64)
                                        * max(1.0, abs(float(x64_flat[g]))))
        tout = {"plan": plan, "vdir": vdir, "h_dir": h, "hs": steps[1:]}
    else:
        dense, tout = _second_order_dirs(run, yours, refs, p)
        h = fdiff.step(np.float64, 2)
        dense = np.stack([fdiff.exact_step(x64_flat, h * d) / h for d in dense])
        coef = np.full(len(dense), h)
        idx, steps = np.zeros(len(dense), np.int64), np.zeros(len(dense))
        tout["h_dir"] = h
        if run.kind is HESSIAN:  # the witness direction actually taken
            tout["dirs_meta"]["witness"] = (dense[0], None)
    program = _fd_program(run.kind, run.fun, run.layout.shapes_only())
    args = (floats64, ints, lin64, jnp.asarray(dense), jnp.asarray(coef), jnp.asarray(idx),
            jnp.asarray(steps))
    points = len(coef) * len(fdiff.OFFSETS) * x64_flat.size
    modes = (2, 1, 0) if points <= _VMAP_ELEMENTS else (1, 0)
    for vectorize in modes:  # 0: a sequential map, for code that vmap cannot batch
        try:
            values, phi_abs = program(*args, vectorize=vectorize)
            break
        except Exception:
            if not vectorize:
                raise
    values = np.asarray(values)
    tout.update(phi_abs=float(phi_abs), dir=values[0] if run.kind.order == 1 else values,
                probe=values[1:] if run.kind.order == 1 else None)
    return tout


def _second_order_dirs(run, yours, refs, p):
    """Dense directions for second differences: the witness's and the worst elements'."""
    rng = np.random.default_rng([run.seed, 1])
    w = rng.standard_normal(p)
    w /= np.linalg.norm(w)
    dirs, meta = [], {}
    if run.kind is HESSIAN:
        dirs.append(w)
        meta["witness"] = (w, None)
        y, a = _f64(yours[0]), _f64(refs[0])
        i, j = np.unravel_index(int(np.argmax(np.abs(y - a))), y.shape) if y.size else (0, 0)
        e_i, e_j = np.zeros(p), np.zeros(p)
        e_i[i], e_j[j] = 1.0, 1.0
        dirs += [e_i + e_j, e_i - e_j]  # polarisation: e_iᵀHe_j = (S(e_i+e_j) - S(e_i-e_j))/4
        meta["elements"] = {0: ((int(i), int(j)), 1, 2)}
    else:
        v = np.concatenate([_f64(c).ravel() for c in jax.tree_util.tree_leaves(run.lin)])
        vn = float(np.linalg.norm(v))
        vhat = v / vn if vn > 0 else v
        dirs += [w + vhat, w - vhat]  # wᵀHv = |v| (S(w+v̂) - S(w-v̂))/4
        meta["witness"] = (w, vn)
        meta["elements"] = {}
        offset = 0
        for k, (y, a) in enumerate(zip(yours, refs, strict=True)):
            y, a = _f64(y), _f64(a)
            if y.size:
                i = int(np.argmax(np.abs(y - a)))
                e = np.zeros(p)
                e[offset + i] = 1.0
                meta["elements"][k] = (np.unravel_index(i, y.shape), len(dirs), len(dirs) + 1)
                dirs += [e + vhat, e - vhat]
            offset += y.size
        meta["vnorm"] = vn
    return np.stack(dirs), {"dirs_meta": meta}


def _judge_tensor(run, k, name, leaf, y, a, a_pert, truth, tout, shadow=None):
    """One tensor: (TensorResult, its share of the witness tolerance, yours as the witness
    should see it: with the elements settled at kinks replaced by autodiff's values)."""
    is_low = run.dtype != "float64"
    y64, a64 = _f64(y), _f64(a)
    alpha, tol, needed = _widen(run, a64, a_pert, truth, shadow)
    base = dict(name=name, argument=run.names[leaf.arg] if run.kind is not HESSIAN else "x",
                path=leaf.path if run.kind is not HESSIAN else "", shape=tuple(np.shape(y)),
                dtype=str(np.asarray(y).dtype), amplification=alpha, tolerance=tol.normwise,
                widening=tol.normwise / cmp.tolerance(run.dtype).normwise)
    if truth is not None:
        base.update(truth_yours=_normwise(y64, truth), truth_autodiff=_normwise(a64, truth))
    table = cmp.tolerance(run.dtype)
    e_ad = 0.0 if truth is None else (_normwise(a64, truth) or 0.0)
    if needed > table.cap:  # autodiff's own rounding exceeds the widest tolerance
        return (TensorResult(status=Status.PASS, resolved=False, **base),
                needed * table.normwise + e_ad, y64)
    comp = cmp.compare_leaf(y64, a64, tol, name)
    t = TensorResult(status=Status.PASS if comp.passed else Status.FAIL, **base)
    seen = y64
    if not comp.passed and is_low and truth is not None and cmp.compare_leaf(
            y64, truth, tol, name).passed:
        t.status = Status.PASS
        t.message = ("differs from autodiff's result in this dtype but is within the tolerance "
                     "of the float64 truth")
    elif not comp.passed and run.kind.order == 1 and run.opts["fd"]:
        seen, comp = _settle(run, k, t, y64, a64, tol, tout, comp)
    t.normwise, t.max_abs, t.max_rel = comp.normwise, comp.max_abs, comp.max_rel
    t.frac_outside = comp.frac_outside
    _set_worst(t, comp.worst_index, y64, a64, truth)
    _element_fd(run, k, t, tout)
    if t.status is Status.FAIL and not t.message:
        outside = int(round(comp.frac_outside * max(y64.size, 1)))
        t.message = (f"{outside} of {y64.size} elements outside the band (rtol {tol.rtol:.1e}, "
                     f"atol {tol.atol:.1e} x max|autodiff|)" if outside else
                     "every element is inside the band, but the normwise error is not")
    return t, tol.normwise + e_ad, seen


def _normwise(a, b):
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / nb if nb > 0 else float(np.linalg.norm(a))


def _set_worst(t, index, y64, a64, truth):
    if index is None or y64.size == 0:
        return
    t.worst_index = tuple(int(i) for i in index)
    t.yours, t.autodiff = float(y64[index]), float(a64[index])
    if truth is not None:
        t.autodiff_float64 = float(truth[index])


def _element_fd(run, k, t, tout):
    """The finite-difference value at the tensor's worst element, if it was probed."""
    if t.worst_index is None:
        return
    if run.kind.order == 1:
        for j, (kk, i, _) in enumerate(tout.get("plan", [])):
            if kk == k and np.unravel_index(i, t.shape) == t.worst_index:
                est = _probe_estimate(tout, j)
                t.finite_differences, t.fd_error = float(est.central), float(est.central_error)
                return
        return
    meta = tout.get("dirs_meta", {}).get("elements", {}).get(k)
    if meta is None or "dir" not in tout:
        return
    index, plus, minus = meta
    if tuple(int(i) for i in np.atleast_1d(index)) != tuple(t.worst_index):
        return
    value, error = _polarized(tout, plus, minus)
    scale = tout["dirs_meta"].get("vnorm") or 1.0
    t.finite_differences, t.fd_error = value * scale, error * scale


def _polarized(tout, plus, minus):
    h = tout["h_dir"]
    ep = fdiff.richardson(tout["dir"][plus], h, order=2, scale=tout["phi_abs"])
    em = fdiff.richardson(tout["dir"][minus], h, order=2, scale=tout["phi_abs"])
    return float(ep.central - em.central) / 4.0, float(ep.central_error + em.central_error) / 4.0


def _probe_estimate(tout, j):
    return fdiff.richardson(tout["probe"][j], tout["hs"][j], order=1, scale=tout["phi_abs"])


def _settle(run, k, t, y64, a64, tol, tout, comp):
    """Probe the elements of tensor k outside the band by one-sided finite differences.

    A kink element (the slopes disagree) where yours gives the left or right slope or a
    value between them, and a smooth element where finite differences side with yours
    against autodiff, are settled: they take autodiff's value, and the rest of the
    tensor is judged again. Returns (yours with settled elements replaced, comparison).
    Sets t.kinks, t.status (FAIL, KINK or PASS) and t.message.
    """
    bandv = cmp.band(a64, tol).ravel()
    flat_y, flat_a = y64.ravel(), a64.ravel()
    outside = np.abs(flat_y - flat_a) > bandv
    masked = flat_y.copy()
    probed, kinks, rescued = set(), [], 0
    for j, (kk, i, _) in enumerate(tout.get("plan", [])):
        if kk != k or i in probed or not outside[i]:
            continue
        probed.add(i)
        est = _probe_estimate(tout, j)
        yi, ai = float(flat_y[i]), float(flat_a[i])
        if bool(fdiff.one_sided_disagree(est)):
            kink = _kink(est, yi, ai, bandv[i], np.unravel_index(i, y64.shape))
            kinks.append(kink)
            if kink.matched != "neither":
                masked[i] = ai
        else:
            c = float(est.central)
            slack = cmp.FD_SAFETY * float(est.central_error) + bandv[i]
            if abs(yi - c) <= slack < abs(ai - c):
                masked[i] = ai
                rescued += 1
    t.kinks = kinks
    if not kinks and not rescued:
        return y64, comp
    masked = masked.reshape(y64.shape)
    comp = cmp.compare_leaf(masked, a64, tol, t.name)
    unprobed = int(outside.sum()) - len(probed)
    notes = []
    if kinks:
        notes.append(f"{len(kinks)} element(s) at a kink, judged apart; the other elements "
                     f"{'pass' if comp.passed else 'do not'}")
    if rescued:
        notes.append(f"{rescued} element(s) where finite differences side with yours against "
                     "autodiff")
    if any(kk.matched == "neither" for kk in kinks):
        notes.append("at a kink yours matches neither one-sided slope")
    if unprobed:
        notes.append(f"{unprobed} more elements outside the band were not probed "
                     "(raise max_probes to probe them)")
    if comp.passed and not unprobed:
        t.status = Status.KINK if kinks else Status.PASS
    t.message = "; ".join(notes)
    return masked, comp


def _kink(est, yi, ai, band_i, index):
    """Which one-sided slope yours gave at a kink element."""
    r, l = float(est.right), float(est.left)
    sr = cmp.FD_SAFETY * float(est.right_error) + band_i
    sl = cmp.FD_SAFETY * float(est.left_error) + band_i
    near_r, near_l = abs(yi - r) <= sr, abs(yi - l) <= sl
    if near_r or near_l:
        matched = "right" if near_r and (not near_l or abs(yi - r) <= abs(yi - l)) else "left"
    elif min(l, r) - max(sl, sr) <= yi <= max(l, r) + max(sl, sr):
        matched = "between"
    else:
        matched = "neither"
    return Kink(tuple(int(q) for q in index), l, r, yi, ai, matched)


def _extra_checks(run, native, tensors):
    kind, opts = run.kind, run.opts
    names = ["hessian"] if kind is HESSIAN else run.display
    tols = [cmp.tolerance(run.dtype).widened(t.widening) for t in tensors]
    if kind.linear and opts["batched"]:
        run.checks.append(_batched_check(native, names, tols))
    if opts["determinism"]:
        run.checks.append(_determinism_check(native["yours"], native["again"], names))
    if kind.linear and opts["zero"]:
        run.checks.append(_zero_check(native["zero"], native["autodiff"], names, tols))
    if opts["dtype"]:
        run.checks.append(_dtype_check(run, native["yours"], names))


def _batched_check(main, names, tols):
    if "batched_error" in main:
        return CheckOutcome("batched", Status.ERROR,
                            f"vmap of yours raised {_first_line(main['batched_error'])} "
                            "(pass batched=False to skip this check)")
    loop = (main["yours"], main["second"])
    for k, nm in enumerate(names):
        for b in range(2):
            comp = cmp.compare_leaf(_f64(main["batched"][k][b]), _f64(loop[b][k]), tols[k], nm)
            if not comp.passed:
                at = comp.worst_index
                return CheckOutcome("batched", Status.FAIL,
                                    f"{nm}: under vmap over cotangents, batch entry {b} differs "
                                    f"from the unbatched call (normwise {comp.normwise:.1e}; at "
                                    f"{at}: {comp.worst_actual:.8g} vs {comp.worst_expected:.8g})")
    return CheckOutcome("batched", Status.PASS)


def _determinism_check(first, second, names):
    for nm, a, b in zip(names, first, second, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        same = np.array_equal(a, b, equal_nan=True) if a.dtype.kind == "f" else np.array_equal(a, b)
        if not same:
            i = (np.unravel_index(int(np.argmax(np.abs(_f64(a) - _f64(b)))), a.shape)
                 if a.size else ())
            return CheckOutcome("determinism", Status.FAIL,
                                f"{nm}: two runs differ, e.g. at {tuple(int(q) for q in i)}: "
                                f"{float(_f64(a)[i]):.17g} then {float(_f64(b)[i]):.17g}")
    return CheckOutcome("determinism", Status.PASS)


def _zero_check(zeros, refs, names, tols):
    for nm, z, a, tol in zip(names, zeros, refs, tols, strict=True):
        z, scale = _f64(z), float(np.max(np.abs(_f64(a)))) if np.size(a) else 0.0
        bad = ~np.isfinite(z) | (np.abs(z) > tol.atol * scale)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), z.shape) if z.size else ()
            return CheckOutcome("zero cotangent", Status.FAIL,
                                f"{nm}: a zero cotangent gives {float(z[i]):.8g} at "
                                f"{tuple(int(q) for q in i)} (a VJP is linear: it must give 0)")
    return CheckOutcome("zero cotangent", Status.PASS)


def _dtype_check(run, yours, names):
    if run.kind is HESSIAN:
        want = [run.dtype]
    else:
        want = [lf.dtype for lf in run.layout.floats]
    wrong = [f"{nm} is {np.asarray(y).dtype}, its primal is {w}"
             for nm, y, w in zip(names, yours, want, strict=True) if np.asarray(y).dtype.name != w]
    if wrong:
        return CheckOutcome("output dtype", Status.FAIL, "; ".join(wrong))
    return CheckOutcome("output dtype", Status.PASS)


def _witness(run, yours, refs, tout, terms):
    """The float64 finite-difference witness along a random direction."""
    if run.kind.order == 1:
        est = fdiff.richardson(tout["dir"], tout["h_dir"], order=1, scale=tout["phi_abs"])
        value, error = float(est.central), float(est.central_error)
        v = [_f64(x) for x in tout["vdir"]]
    else:
        w, vn = tout["dirs_meta"]["witness"]
        if run.kind is HESSIAN:
            e = fdiff.richardson(tout["dir"][0], tout["h_dir"], order=2, scale=tout["phi_abs"])
            value, error, est = float(e.central), float(e.central_error), None
            p_y = float(w @ _f64(yours[0]) @ w)
            p_a = float(w @ _f64(refs[0]) @ w)
            scale = float(np.linalg.norm(_f64(refs[0])))
            tol = (cmp.FD_SAFETY * error + cmp.FD_TOLERANCE[2] * scale + terms[0] * scale)
            return _verdict(value, error, p_y, p_a, tol, None)
        value, error = _polarized(tout, 0, 1)
        value, error, est = value * vn, error * vn, None
        sizes = [math.prod(lf.shape) for lf in run.layout.floats]
        v = [c.reshape(lf.shape) for c, lf in zip(np.split(w, np.cumsum(sizes)[:-1]),
                                                   run.layout.floats, strict=True)]
    p_y = sum(float(np.vdot(_f64(y), vi)) for y, vi in zip(yours, v, strict=True))
    p_a = sum(float(np.vdot(_f64(a), vi)) for a, vi in zip(refs, v, strict=True))
    scale = math.sqrt(sum(float(np.vdot(_f64(a), _f64(a))) for a in refs))
    share = sum(term * float(np.linalg.norm(_f64(a))) * float(np.linalg.norm(vi))
                for term, a, vi in zip(terms, refs, v, strict=True))
    order = run.kind.order
    tol = cmp.FD_SAFETY * error + cmp.FD_TOLERANCE[order] * scale + share
    return _verdict(value, error, p_y, p_a, tol, est)


def _verdict(value, error, p_y, p_a, tol, est):
    yours_ok = abs(value - p_y) <= tol
    ad_ok = abs(value - p_a) <= tol
    if yours_ok:
        verdict = "agrees"
    elif ad_ok:
        verdict = "disagrees"
    elif est is not None and bool(fdiff.one_sided_disagree(est)):
        verdict = "kink along v"
    else:
        verdict = "inconclusive"
    return Witness(value=value, error=error, yours=p_y, autodiff=p_a, tolerance=tol,
                   verdict=verdict)


def _result(run, tensors, witness):
    statuses = [t.status for t in tensors] + [c.status for c in run.checks]
    if witness is not None and witness.verdict == "disagrees":
        statuses.append(Status.FAIL)
    if witness is not None and witness.verdict in ("inconclusive", "kink along v"):
        run.notes.append(f"the finite-difference witness is {witness.verdict}: finite "
                         "differences disagree with autodiff too, so they judge nothing here")
    status = Status.PASS
    for s in (Status.KINK, Status.FAIL, Status.ERROR):
        if s in statuses:
            status = s
    if not all(t.resolved for t in tensors):
        run.notes.append(f"some tensors cannot be resolved in {run.dtype} and were not judged; "
                         "check in float64 to judge the derivation there")
    return CheckResult(function=run.function, name=run.name, status=status, dtype=run.dtype,
                       mode=run.opts["mode"], tensors=tensors, checks=run.checks, witness=witness,
                       notes=run.notes)


# --- the public functions --------------------------------------------------------------

def _recorded(check):
    """Hand every result to the active recorders (see RECORDERS)."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        result = check(*args, **kwargs)
        for sink in RECORDERS:
            sink.append(result)
        return result
    return wrapper


def _label(fun, name):
    if name is not None:
        return str(name)
    target = getattr(fun, "fun", fun)
    return getattr(target, "__name__", None) or type(target).__name__


def _cotangent(function, run, fun, cotangent):
    """The cotangent: drawn from the seed, or the user's, checked against fun's output."""
    with _native_scope(run.layout):
        floats, ints = _split(run.layout, run.arrays)
        out = jax.eval_shape(lambda *fl: fun(*run.layout.assemble(fl, ints)), *floats)
    for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"{function}: fun's output {jax.tree_util.keystr(path) or 'value'} "
                             f"is {leaf.dtype}; only floating outputs can be differentiated")
    if cotangent is None:
        rng = np.random.default_rng([run.seed, 0])
        rng2 = np.random.default_rng([run.seed, 2])
        return _random_like(rng, out), _random_like(rng2, out)
    got_def = jax.tree_util.tree_structure(cotangent)
    out_def = jax.tree_util.tree_structure(out)
    shapes_ok = got_def == out_def and all(
        tuple(np.shape(c)) == tuple(o.shape)
        for c, o in zip(jax.tree_util.tree_leaves(cotangent), jax.tree_util.tree_leaves(out),
                        strict=True))
    if not shapes_ok:
        raise ValueError(f"{function}: cotangent must match fun's output: expected "
                         f"{_describe(out)}, got {_describe(cotangent)}")
    ct = jax.tree_util.tree_map(lambda c, o: np.asarray(c).astype(o.dtype), cotangent, out)
    rng2 = np.random.default_rng([run.seed, 2])
    return ct, _random_like(rng2, out)


def _new_run(function, kind, fun, deriv, primals, seed, opts, *, ints_allowed=True):
    _require_seed(function, seed)
    names = _arg_names(fun, len(primals), opts["names"], function)
    layout, arrays, dtype, display = _prepare(function, primals, names, ints_allowed=ints_allowed)
    return _Run(function=function, name=_label(fun, opts["name"]), kind=kind, fun=fun,
                deriv=deriv, layout=layout, arrays=arrays, dtype=dtype, display=display,
                names=names, opts=opts, seed=int(seed))


@_recorded
def check_vjp(fun: Callable, vjp: Callable, *primals: Any, cotangent: Any = None, seed: int = 0,
              **options: Any) -> CheckResult:
    """Check ``vjp(*primals, cotangent)`` against ``jax.vjp(fun, *primals)``.

    Args:
      fun: fun(*primals) -> any pytree of floating arrays.
      vjp: vjp(*primals, cotangent) -> a tuple with one entry per primal, each shaped like
        its primal (a pytree); a bare value is accepted for a single primal; integer and
        boolean primal leaves are constants, their entries None.
      *primals: arrays or pytrees of arrays (numpy or JAX; float64 numpy arrays are
        checked in float64 whatever the global x64 setting).
      cotangent: shaped like fun's output; by default standard normal from ``seed``.
      seed: seeds the cotangent, the finite-difference direction and the perturbations.
      **options: see ``OPTIONS``.

    Returns:
      A CheckResult.
    """
    opts = _options("check_vjp", options)
    _require_callable("check_vjp", "fun", fun)
    _require_callable("check_vjp", "vjp", vjp)
    run = _new_run("check_vjp", VJP, fun, vjp, primals, seed, opts)
    return _check_linear(run, fun, cotangent)


def _check_linear(run, fun, cotangent):
    try:
        run.lin, run.lin2 = _cotangent(run.function, run, fun, cotangent)
    except ValueError:
        raise
    except Exception as err:
        return _error_result(run.function, run.name, run.dtype,
                             f"fun(*primals) raised {_first_line(err)}", err)
    return _check(run)


@functools.lru_cache(maxsize=64)
def _custom_adapters(fun):
    """(its primal function, the VJP through its custom rule): cached per custom_vjp, so
    checking one rule on new inputs of the same shapes compiles nothing again."""
    def primal(*args):
        return fun.fun(*args)

    def rule(*args_and_ct):
        *args, ct = args_and_ct
        return jax.vjp(fun, *args)[1](ct)

    return primal, rule


@_recorded
def check_custom_vjp(fun: Callable, *primals: Any, cotangent: Any = None, seed: int = 0,
                     **options: Any) -> CheckResult:
    """Check a ``jax.custom_vjp``'s rule against autodiff of its primal function.

    Args:
      fun: a ``jax.custom_vjp`` (its ``fun`` is differentiated by JAX for the
        reference; ``jax.vjp(fun, ...)`` runs your fwd/bwd rule). With nondiff_argnums,
        close over those arguments (functools.partial) and check a custom_vjp without.
      *primals, cotangent, seed, **options: as for ``check_vjp``.

    Returns:
      A CheckResult.
    """
    opts = _options("check_custom_vjp", options)
    if not isinstance(fun, jax.custom_vjp):
        raise ValueError(f"check_custom_vjp: fun must be a jax.custom_vjp, got "
                         f"{type(fun).__name__} (use check_vjp for a separate vjp function)")
    nondiff = tuple(fun.nondiff_argnums)
    if nondiff:
        raise ValueError(f"check_custom_vjp: fun has nondiff_argnums {nondiff}; close over "
                         "those arguments (functools.partial) and check the rest")
    primal, rule = _custom_adapters(fun)
    if opts["name"] is None:
        opts["name"] = _label(fun, None)
    if opts["names"] is None:
        opts["names"] = _arg_names(fun, len(primals), None, "check_custom_vjp")
    run = _new_run("check_custom_vjp", VJP, primal, rule, primals, seed, opts)
    return _check_linear(run, primal, cotangent)


@_recorded
def check_grad(fun: Callable, grad: Callable, *primals: Any, seed: int = 0,
               **options: Any) -> CheckResult:
    """Check ``grad(*primals)`` against ``jax.grad`` of scalar ``fun``.

    Args:
      fun: fun(*primals) -> a scalar.
      grad: grad(*primals) -> one gradient per primal, as for a vjp (a bare value for one
        primal; None at integer leaves).
      *primals, seed, **options: as for ``check_vjp``.

    Returns:
      A CheckResult.
    """
    opts = _options("check_grad", options)
    _require_callable("check_grad", "fun", fun)
    _require_callable("check_grad", "grad", grad)
    run = _new_run("check_grad", GRAD, fun, grad, primals, seed, opts)
    _require_scalar(run, fun)
    return _check(run)


def _require_scalar(run, fun):
    with _native_scope(run.layout):
        floats, ints = _split(run.layout, run.arrays)
        try:
            out = jax.eval_shape(lambda *fl: fun(*run.layout.assemble(fl, ints)), *floats)
        except Exception:
            return
    if not hasattr(out, "shape") or math.prod(out.shape) != 1:
        raise ValueError(f"{run.function}: fun must return a scalar, it returned {_describe(out)}")


@_recorded
def check_hessian(fun: Callable, hessian: Callable, x: Any, seed: int = 0,
                  **options: Any) -> CheckResult:
    """Check ``hessian(x)`` against ``jax.hessian`` of scalar ``fun`` over ravelled ``x``.

    Args:
      fun: fun(x) -> a scalar; x a pytree of floating arrays.
      hessian: hessian(x) -> (P, P) in ``jax.flatten_util.ravel_pytree(x)`` order.
      x: the point.
      seed, **options: as for ``check_vjp`` (batched and zero do not apply).

    Returns:
      A CheckResult with one tensor, "hessian"; its worst element is named by both
      parameters it differentiates.
    """
    opts = _options("check_hessian", options)
    _require_callable("check_hessian", "fun", fun)
    _require_callable("check_hessian", "hessian", hessian)
    if opts["mode"] == "fast":
        raise ValueError("check_hessian: mode='fast' is for first-order checks")
    run = _new_run("check_hessian", HESSIAN, fun, hessian, (x,), seed, opts, ints_allowed=False)
    _require_scalar(run, fun)
    return _check(run)


@_recorded
def check_hvp(fun: Callable, hvp: Callable, x: Any, v: Any, **options: Any) -> CheckResult:
    """Check ``hvp(x, v)`` (the Hessian of scalar ``fun`` at ``x`` times ``v``).

    Args:
      fun: fun(x) -> a scalar; x a pytree of floating arrays.
      hvp: hvp(x, v) -> shaped like x.
      x: the point.
      v: the vector, shaped like x.
      **options: as for ``check_vjp``, and ``seed`` (default 0).

    Returns:
      A CheckResult, one tensor per leaf of x.
    """
    seed = options.pop("seed", 0)
    opts = _options("check_hvp", options)
    _require_callable("check_hvp", "fun", fun)
    _require_callable("check_hvp", "hvp", hvp)
    if opts["mode"] == "fast":
        raise ValueError("check_hvp: mode='fast' is for first-order checks")
    run = _new_run("check_hvp", HVP, fun, hvp, (x,), seed, opts, ints_allowed=False)
    if jax.tree_util.tree_structure(v) != jax.tree_util.tree_structure(x) or any(
            np.shape(a) != np.shape(b)
            for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(x),
                            strict=True)):
        raise ValueError(f"check_hvp: v must be shaped like x: expected {_describe(x)}, "
                         f"got {_describe(v)}")
    _require_scalar(run, fun)
    run.lin = jax.tree_util.tree_map(lambda a, lf: np.asarray(a).astype(lf),
                                     v, jax.tree_util.tree_unflatten(
                                         run.layout.treedefs[0],
                                         [lf.dtype for lf in run.layout.leaves]))
    rng = np.random.default_rng([run.seed, 2])
    run.lin2 = jax.tree_util.tree_map(lambda a: rng.standard_normal(np.shape(a)).astype(a.dtype),
                                      run.lin)
    return _check(run)
