"""The checker's options and primals: what a check_* call was asked to do, and on what.

``Options`` is the one record of the keyword options every check_* accepts (``OPTIONS``
is its help text, one line per field). ``prepare`` validates and flattens the primals
into a ``Layout`` (the static shape of the check: which leaves are floating, their
dtypes, and where yours returns each one) and host arrays; ``match`` reads the structure
yours returns against it.

Example::

    >>> import numpy as np
    >>> Options.parse("check_vjp", {"max_probes": 4}).max_probes
    4
    >>> layout, arrays, dtype, display = prepare("check_vjp", (np.ones(3), 2), ("x", "k"))
    >>> dtype, display, [lf.is_float for lf in layout.leaves]
    ('float64', ['x'], [True, False])
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from suite import compare as cmp

__all__ = ["Options", "OPTIONS", "Mismatch", "Leaf", "Layout", "prepare", "arg_names",
           "native_scope", "split", "expected_structure", "match", "describe", "is_none",
           "require_callable", "require_seed"]


@dataclasses.dataclass(frozen=True)
class Options:
    """The keyword options of a check (a few apply to first-order checks only)."""

    names: tuple | None = dataclasses.field(default=None, metadata={
        "help": "argument names for the report (default: from fun's signature)"})
    name: str | None = dataclasses.field(default=None, metadata={
        "help": "a label for this check (default: fun's name)"})
    mode: str = dataclasses.field(default="full", metadata={
        "help": '"full" (default) or "fast": one projection uᵀJv, the full check if it fails'})
    fd: bool = dataclasses.field(default=True, metadata={
        "help": "run the float64 finite-difference witness and element probes (default True)"})
    batched: bool = dataclasses.field(default=True, metadata={
        "help": "check yours under vmap over cotangents (default True)"})
    determinism: bool = dataclasses.field(default=True, metadata={
        "help": "run yours twice and require identical results (default True)"})
    zero: bool = dataclasses.field(default=True, metadata={
        "help": "require zeros for a zero cotangent (default True)"})
    dtype: bool = dataclasses.field(default=True, metadata={
        "help": "require each result to have its primal's dtype (default True)"})
    jit: bool = dataclasses.field(default=True, metadata={
        "help": "jit-compile yours (default True; falls back to eager if it cannot be traced)"})
    max_probes: int = dataclasses.field(default=32, metadata={
        "help": "elements probed by one-sided finite differences per check (default 32)"})
    nondet_tol: float = dataclasses.field(default=0.0, metadata={
        "help": "the run-to-run difference determinism allows, max|run1 - run2| / max|run1| "
                "per tensor (default 0: bitwise identical)"})

    @classmethod
    def parse(cls, function: str, options: dict) -> Options:
        """The Options of ``options`` (a check_*'s keyword arguments), validated."""
        known = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"{function}: unknown option {unknown[0]!r}; known: {known}")
        opts = cls(**options)
        if opts.mode not in ("full", "fast"):
            raise ValueError(f"{function}: mode must be 'full' or 'fast', got {opts.mode!r}")
        if isinstance(opts.max_probes, bool) or not isinstance(opts.max_probes, int) \
                or opts.max_probes < 0:
            raise ValueError(f"{function}: max_probes must be a non-negative int, "
                             f"got {opts.max_probes!r}")
        if isinstance(opts.nondet_tol, bool) or not isinstance(opts.nondet_tol, (int, float)) \
                or not opts.nondet_tol >= 0:
            raise ValueError(f"{function}: nondet_tol must be a non-negative number, "
                             f"got {opts.nondet_tol!r}")
        return opts

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


# Keyword options every check_* accepts: name -> what it does (from Options).
OPTIONS = {f.name: f.metadata["help"] for f in dataclasses.fields(Options)}


class Mismatch(Exception):
    """The derivative under test returned the wrong structure or shape (an ERROR)."""


def is_none(x: Any) -> bool:
    return x is None


def require_callable(function: str, what: str, f: Any) -> None:
    if not callable(f):
        raise ValueError(f"{function}: {what} must be callable, got {type(f).__name__}")


def require_seed(function: str, seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{function}: seed must be an int, got {seed!r}")


def arg_names(fun: Callable, n: int, names: Any, function: str) -> tuple:
    """The primals' display names: ``names`` validated, or fun's parameter names."""
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
class Leaf:
    """One primal leaf: its argument, pytree path, shape, dtype, and whether it is float."""

    arg: int
    path: str
    shape: tuple
    dtype: str
    is_float: bool


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static shape of one check: primal leaves and how yours is read (hashable)."""

    leaves: tuple
    treedefs: tuple
    positions: tuple = ()  # per float leaf: index in yours' flattened result, -1: zeros
    int_positions: tuple = ()  # per integer leaf: index of what yours returned there, -1: none

    @property
    def floats(self) -> tuple:
        return tuple(leaf for leaf in self.leaves if leaf.is_float)

    def assemble(self, floats: Any, ints: Any) -> tuple:
        it_f, it_i = iter(floats), iter(ints)
        per_arg = [[] for _ in self.treedefs]
        for leaf in self.leaves:
            per_arg[leaf.arg].append(next(it_f) if leaf.is_float else next(it_i))
        return tuple(jax.tree_util.tree_unflatten(td, lv)
                     for td, lv in zip(self.treedefs, per_arg, strict=True))

    def pick(self, raw: Any) -> tuple:
        flat = jax.tree_util.tree_flatten(raw, is_leaf=is_none)[0]
        return tuple(jnp.zeros(leaf.shape, leaf.dtype) if pos < 0 else jnp.asarray(flat[pos])
                     for leaf, pos in zip(self.floats, self.positions, strict=True))

    @property
    def ints(self) -> tuple:
        return tuple(leaf for leaf in self.leaves if not leaf.is_float)

    def pick_ints(self, raw: Any) -> tuple:
        """What yours returned at the integer leaves that it returned something for."""
        if not any(pos >= 0 for pos in self.int_positions):
            return ()
        flat = jax.tree_util.tree_flatten(raw, is_leaf=is_none)[0]
        return tuple(jnp.asarray(flat[pos]) for pos in self.int_positions if pos >= 0)

    def shapes_only(self) -> Layout:
        """The layout without dtypes or positions: what autodiff and finite differences need."""
        leaves = tuple(dataclasses.replace(lf, dtype="") for lf in self.leaves)
        return Layout(leaves, self.treedefs)

    def unflat(self, flat: Any) -> tuple:
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
        raise ValueError(f"{function}: {where} is complex ({dtype}); complex primals are "
                         "checked by check_vjp, check_custom_vjp and check_grad")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == np.bool_):
        raise ValueError(f"{function}: {where} has dtype {dtype}, not a number")
    return arr, weak


def prepare(function: str, primals: tuple, names: tuple, *,
            ints_allowed: bool = True) -> tuple:
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
            leaves.append(Leaf(i, jax.tree_util.keystr(path), tuple(np.shape(arr)),
                               np.dtype(arr.dtype).name, is_float))
    strong = [np.dtype(a.dtype) for (a, weak), lf in zip(raw, leaves, strict=True)
              if lf.is_float and not weak]
    if not any(lf.is_float for lf in leaves):
        kinds = ", ".join(f"primal {lf.arg} ({names[lf.arg]}{lf.path}) is {lf.dtype}"
                          for lf in leaves)
        raise ValueError(f"{function}: no floating-point primal, nothing to differentiate: "
                         f"{kinds}")
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
    return Layout(tuple(leaves), tuple(treedefs)), arrays, dtype.name, display


def native_scope(layout: Layout) -> Any:
    """x64 as the caller set it, unless a float64 primal needs it (then scoped on)."""
    wants = any(lf.dtype == "float64" for lf in layout.leaves)
    return jax.enable_x64(True) if wants else contextlib.nullcontext()


def split(layout: Layout, arrays: list) -> tuple:
    """(float leaves, integer leaves) as device arrays."""
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


def describe(tree: Any) -> str:
    """A pytree's structure with each leaf as dtype[shape]."""
    return repr(jax.tree_util.tree_map(_Shape, tree, is_leaf=is_none))


def expected_structure(layout: Layout, arrays: list) -> tuple:
    """What yours must return: per primal its tree, None at integer leaves."""
    per_arg = [[] for _ in layout.treedefs]
    for leaf, arr in zip(layout.leaves, arrays, strict=True):
        per_arg[leaf.arg].append(arr if leaf.is_float else None)
    return tuple(jax.tree_util.tree_unflatten(td, lv)
                 for td, lv in zip(layout.treedefs, per_arg, strict=True))


def _same_structure(a, b):
    return (jax.tree_util.tree_structure(a, is_leaf=is_none)
            == jax.tree_util.tree_structure(b, is_leaf=is_none))


def match(layout: Layout, raw: Any, expected: tuple, names: tuple, what: str) -> tuple:
    """(positions of the float leaves in yours' flattened result, those of the integer
    leaves (-1 where yours returned None or float0), notes), or Mismatch."""
    n = len(expected)

    def mismatch(why):
        shown = ", ".join(f"{nm}: {describe(e)}" for nm, e in zip(names, expected, strict=True))
        got = describe(raw)
        raise Mismatch(f"{what} returned a result that does not match the primals ({why})\n"
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
    positions, int_positions, notes, offset = [], [], [], 0
    for i, (entry, exp) in enumerate(zip(entries, expected, strict=True)):
        e_leaves, e_def = jax.tree_util.tree_flatten(entry, is_leaf=is_none)
        x_leaves, x_def = jax.tree_util.tree_flatten(exp, is_leaf=is_none)
        if entry is None:
            positions += [-1] * sum(x is not None for x in x_leaves)
            int_positions += [-1] * sum(x is None for x in x_leaves)
            if any(x is not None for x in x_leaves):
                notes.append(f"{what} returned None for {names[i]}: taken as zeros")
            offset += 1
            continue
        if e_def != x_def:
            mismatch(f"the structure of {names[i]}'s entry differs")
        for j, (got, want) in enumerate(zip(e_leaves, x_leaves, strict=True)):
            if want is None:
                returned = got is not None and jnp.result_type(got) != jax.dtypes.float0
                int_positions.append(offset + j if returned else -1)
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
    return tuple(positions), tuple(int_positions), notes
