"""The checker's compiled runs: yours, autodiff, their repeats, each returning a typed record.

``Check`` is what one check_* call is about (the kind, the two functions, the primals'
layout and host arrays, the options); ``native_runs`` runs everything in the check's own
dtype and returns ``NativeRuns``; ``truth_run`` is autodiff on the inputs widened to
float64; ``fast_run`` the one projection of ``mode="fast"``. Programs are jit-compiled
once per (kind, function, layout): checking the same code on new inputs of the same
shapes compiles nothing again (jit caches by shapes, dtypes and the x64 scope).
Autodiff is keyed without dtypes, so a float32 check's float64 truth and a float64
check of the same function share one compile.

Example::

    >>> import numpy as np
    >>> from suite.check.kinds import VJP
    >>> from suite.check.options import Options, prepare
    >>> layout, arrays, dtype, display = prepare("check_vjp", (np.ones(2),), ("x",))
    >>> c = Check("check_vjp", "double", VJP, lambda x: 2 * x, lambda x, g: 2 * g, layout,
    ...           arrays, dtype, display, ("x",), Options(), 0, lin=np.ones(2),
    ...           lin2=np.ones(2))
    >>> c = locate(c)
    >>> [float(v) for v in native_runs(c).yours[0]]
    [2.0, 2.0]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check.kinds import Kind
from suite.check.options import Layout, Options, native_scope, split
from suite.check.recast import cached, retype, retyped

__all__ = ["Check", "NativeRuns", "FastRun", "locate", "native_runs", "truth_run",
           "fast_run", "float64_inputs", "yours_float64", "as_f64", "first_line", "PERTURB_ULPS"]

PERTURB_ULPS = 2.0  # the input perturbation that re-rolls rounding (see judge.widen)


@dataclasses.dataclass(frozen=True)
class Check:
    """One check: what is checked, on which inputs, with which options (host arrays)."""

    function: str
    name: str
    kind: Kind
    fun: Callable
    deriv: Callable
    layout: Layout
    arrays: list
    dtype: str
    display: list
    names: tuple
    opts: Options
    seed: int
    lin: Any = None          # cotangent (vjp) or vector (hvp), host arrays in its dtype
    lin2: Any = None
    eager: bool = False
    notes: list = dataclasses.field(default_factory=list)

    def replace(self, **changes: Any) -> Check:
        return dataclasses.replace(self, **changes)

    def device_inputs(self) -> tuple:
        """(floats, ints, lin, lin2) as device arrays, in the check's dtype."""
        floats, ints = split(self.layout, self.arrays)
        lin = None if self.lin is None else jax.tree_util.tree_map(jnp.asarray, self.lin)
        lin2 = None if self.lin2 is None else jax.tree_util.tree_map(jnp.asarray, self.lin2)
        return floats, ints, lin, lin2


@dataclasses.dataclass
class NativeRuns:
    """Every run in the check's dtype, on the host (one array per judged tensor)."""

    yours: tuple
    autodiff: tuple
    perturbed: list                  # autodiff on the inputs moved by +2 and -2 ulps
    again: tuple | None = None       # yours run a second time (determinism)
    zero: tuple | None = None        # yours for a zero linear argument
    second: tuple | None = None      # yours for the second linear argument
    batched: tuple | None = None     # yours under vmap over both linear arguments
    batched_error: Exception | None = None
    shadow: tuple | None = None      # float64 checks: autodiff on the inputs rounded to float32
    integers: tuple = ()             # what yours returned at integer primals (if anything)


@dataclasses.dataclass(frozen=True)
class FastRun:
    """mode="fast": yours' (Jᵀu)ᵀv, autodiff's uᵀ(Jv), and ||Jᵀu||."""

    yours: float
    autodiff: float
    norm: float


def as_f64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip().splitlines()[0][:500]


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _yours_flat(kind, deriv, layout, floats, ints, lin):
    return kind.read(layout, kind.call(deriv, layout.assemble(floats, ints), lin))


def _yours_batched(kind, deriv, layout, floats, ints, lin, batch, batched):
    """Yours (and, if ``batched``, yours under vmap over a stack of linear arguments)."""
    def yours(lin_):
        return _yours_flat(kind, deriv, layout, floats, ints, lin_)
    raw = kind.call(deriv, layout.assemble(floats, ints), lin)
    out = {"yours": kind.read(layout, raw), "integers": layout.pick_ints(raw)}
    if batched:
        out["batched"] = jax.vmap(yours)(batch)
    return out


def _autodiff(kind, fun, layout, floats, ints, lin):
    """Autodiff of fun with respect to the float leaves (a tuple, one per float leaf)."""
    def f(*fl):
        return fun(*layout.assemble(fl, ints))
    return kind.autodiff(f, floats, lin)


def _fast(kind, fun, deriv, layout, floats, ints, lin, vdir):
    """uᵀ(J v) by forward autodiff against (Jᵀu)ᵀ v from yours, and ||Jᵀu||."""
    yours = _yours_flat(kind, deriv, layout, floats, ints, lin)
    def f(*fl):
        return fun(*layout.assemble(fl, ints))
    jv = jax.jvp(f, tuple(floats), tuple(vdir))[1]
    a = sum(jnp.vdot(y.astype(v.dtype), v) for y, v in zip(yours, vdir, strict=True))
    u = kind.projection_weights(lin, jv)
    b = sum(jnp.vdot(ui, ji.astype(ui.dtype))
            for ui, ji in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(jv),
                              strict=True))
    n = jnp.sqrt(sum(jnp.vdot(y, y).real for y in yours))
    return a, b, n


@cached
def _yours_program(kind, deriv, layout):
    plain = functools.partial(_yours_batched, kind, deriv, layout)
    return jax.jit(plain, static_argnames="batched"), plain


@cached
def _autodiff_program(kind, fun, shape_layout):
    return jax.jit(functools.partial(_autodiff, kind, fun, shape_layout))


@cached
def _fast_program(kind, fun, deriv, layout):
    return jax.jit(functools.partial(_fast, kind, fun, deriv, layout))


def locate(check: Check) -> Check:
    """Trace yours once for its structure (eagerly if it cannot be traced): the check with
    yours' result positions in its layout (and eager set, with a note, if it had to be)."""
    if not check.opts.jit:
        check = check.replace(eager=True)
    with native_scope(check.layout):
        floats, ints, lin, _ = check.device_inputs()

        def call(*fl):
            return check.kind.call(check.deriv, check.layout.assemble(fl, ints), lin)
        try:
            raw = jax.eval_shape(call, *floats)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError,
                jax.errors.TracerBoolConversionError) as err:
            check.notes.append(f"{check.kind.what} cannot be traced ({first_line(err)}); it was "
                               "run eagerly (op by op)")
            check = check.replace(eager=True)
            raw = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), call(*floats))
    layout, notes = check.kind.locate(check.layout, raw, check.names, check.arrays)
    check.notes.extend(notes)
    return check.replace(layout=layout)


def _run_yours(check, floats, ints, lin, batch=None):
    """Yours in the check's dtype: (its outputs, the batched run's exception).

    Falls back to eager (op-by-op) execution when yours cannot be traced; an exception
    under vmap only is returned (the batched check's ERROR).
    """
    jitted, plain = _yours_program(check.kind, check.deriv, check.layout)
    call = plain if check.eager else jitted
    scope = jax.disable_jit() if check.eager else contextlib.nullcontext()
    if batch is None:
        with scope:
            return _host(call(floats, ints, lin, None, batched=False)), None
    try:
        with scope:
            return _host(call(floats, ints, lin, batch, batched=True)), None
    except Exception as err:
        with scope:
            return _host(call(floats, ints, lin, None, batched=False)), err


def _run_autodiff(check, floats, ints, lin, fun=None):
    program = _autodiff_program(check.kind, fun or check.fun, check.layout.shapes_only())
    return _host(program(floats, ints, lin))


def _perturb(rng, x, dtype, sign):
    """x·(1 + sign·2u·r) per element (r = ±1 drawn from rng), rounded back to x's dtype."""
    u = cmp.unit_roundoff(dtype)
    xf = as_f64(x)
    r = rng.choice([-1.0, 1.0], size=xf.shape)
    return np.asarray(xf * (1.0 + sign * PERTURB_ULPS * u * r)).astype(np.asarray(x).dtype)


def _perturbed(check, floats, lin, sign):
    """Float leaves (and the linear argument) times (1 ± 2u r), r = ±1 per element, rounded
    back: the same r for both signs, so the symmetric difference cancels the first-order
    change of the result and leaves the re-rolled rounding."""
    rng = np.random.default_rng([check.seed, 3])
    pf = tuple(jnp.asarray(_perturb(rng, f, check.dtype, sign)) for f in floats)
    plin = None if lin is None else jax.tree_util.tree_map(
        lambda c: jnp.asarray(_perturb(rng, c, check.dtype, sign)), lin)
    return pf, plin


def native_runs(check: Check) -> NativeRuns:
    """Every run in the check's dtype: one compile of yours, one of autodiff, then calls.

    ``check`` has been through ``locate``; the batched run is skipped (with a note) when
    yours runs eagerly.
    """
    opts, linear = check.opts, check.kind.linear
    with native_scope(check.layout):
        floats, ints, lin, lin2 = check.device_inputs()
        batch = None
        if linear and opts.batched and not check.eager:
            batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), lin, lin2)
        out, batched_error = _run_yours(check, floats, ints, lin, batch)
        runs = NativeRuns(yours=out["yours"], autodiff=_run_autodiff(check, floats, ints, lin),
                          perturbed=[], batched=out.get("batched"), batched_error=batched_error,
                          integers=out["integers"])
        if opts.determinism:
            runs.again = _run_yours(check, floats, ints, lin)[0]["yours"]
        if linear and opts.zero:
            zeros = jax.tree_util.tree_map(jnp.zeros_like, lin)
            runs.zero = _run_yours(check, floats, ints, zeros)[0]["yours"]
        if batch is not None and batched_error is None:
            runs.second = _run_yours(check, floats, ints, lin2)[0]["yours"]
        # autodiff on inputs moved by ±2 ulps: how much it amplifies its own rounding
        for sign in (1.0, -1.0):
            pf, plin = _perturbed(check, floats, lin, sign)
            runs.perturbed.append(_run_autodiff(check, pf, ints, plin))
        if check.dtype == "float64":  # autodiff's float32 shadow: the function's conditioning
            def narrow(x):
                return jnp.asarray(np.asarray(x).astype(np.float32))
            runs.shadow = _run_autodiff(
                check, tuple(narrow(f) for f in floats), ints,
                None if lin is None else jax.tree_util.tree_map(narrow, lin),
                retyped(check.fun, check.layout, "float32"))
    return runs


def float64_inputs(check: Check) -> tuple:
    """(floats, ints, lin) widened to float64, as device arrays (call under x64)."""
    pairs = list(zip(check.arrays, check.layout.leaves, strict=True))
    floats64 = tuple(jnp.asarray(as_f64(a)) for a, lf in pairs if lf.is_float)
    ints = tuple(jnp.asarray(a) for a, lf in pairs if not lf.is_float)
    lin64 = None if check.lin is None else jax.tree_util.tree_map(
        lambda c: jnp.asarray(as_f64(c)), check.lin)
    return floats64, ints, lin64


def truth_run(check: Check) -> tuple:
    """Autodiff on the inputs widened to float64: the truth a low-precision check is held to."""
    fun = retyped(check.fun, check.layout, "float64")
    with jax.enable_x64(True):
        return _run_autodiff(check, *float64_inputs(check), fun)


def fast_run(check: Check) -> FastRun:
    """The projection of mode="fast", in the check's dtype."""
    with native_scope(check.layout):
        floats, ints, lin, _ = check.device_inputs()
        fast = _fast_program(check.kind, check.fun, check.deriv, check.layout)
        vdir = fdiff.random_direction(check.seed + 1, floats)
        scope = jax.disable_jit() if check.eager else contextlib.nullcontext()
        with scope:
            a, b, n = (float(t) for t in fast(floats, ints, lin, vdir))
    return FastRun(a, b, n)


@cached
def _yours64_program(kind, deriv, layout, lin_def, lin_specs):
    """Yours traced at the check's own dtypes, compiled to run with every float in float64."""
    float_specs = tuple(jax.ShapeDtypeStruct(lf.shape, lf.dtype) for lf in layout.floats)
    int_specs = tuple(jax.ShapeDtypeStruct(lf.shape, lf.dtype) for lf in layout.leaves
                      if not lf.is_float)
    lin_spec = jax.tree_util.tree_unflatten(
        lin_def, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in lin_specs])

    def native(floats, ints, lin):
        return _yours_flat(kind, deriv, layout, floats, ints, lin)
    with native_scope(layout):
        program = retype(native, (float_specs, int_specs, lin_spec), "float64")
    return jax.jit(program)


def yours_float64(check: Check) -> tuple:
    """Yours on the inputs widened to float64, its program retyped (every float it holds
    in float64): its derivation without the check dtype's rounding."""
    lin_leaves, lin_def = jax.tree_util.tree_flatten(check.lin)
    lin_specs = tuple((tuple(np.shape(c)), np.asarray(c).dtype.name) for c in lin_leaves)
    program = _yours64_program(check.kind, check.deriv, check.layout, lin_def, lin_specs)
    with jax.enable_x64(True):
        return _host(program(*float64_inputs(check)))
