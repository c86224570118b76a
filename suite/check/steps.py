"""check_steps: which step of a backward pass is wrong first, and on which line.

The forward marks intermediates (``suite.mark(name, value)``); the backward states its
adjoint of each (``suite.adjoint(name, value)``). check_steps gives the per-tensor
verdict of ``check_vjp`` on the whole backward, and one ``StepResult`` per step.

The true adjoint of each marked value. Write the forward with a zero added at each
marked value, y = F(x; z), z_m = 0. For the objective L = ⟨ȳ, F(x; z)⟩ (ȳ the
cotangent), ∂L/∂z_m at z = 0 is exactly d(objective)/d(value_m): adding z_m is the
identity in value, and its derivative routes through everything that consumes the marked
value. One ``jax.vjp`` of z ↦ F(x; z) gives every step's true adjoint at once (in the
check's dtype; in float64 too, the truth a low-precision check is held to).

Own error and inherited error. The backward computes its steps in order, each from the
values returned by earlier ``adjoint`` calls: a_k = B_k(r_1, ..., r_{k-1}) (and the
primals), where r_j is what ``adjoint`` returned for step j. Let ā_j be the true
adjoints. A correct backward has B_k(ā_1, ..., ā_{k-1}) = ā_k. So run the backward a
second time with every ``adjoint`` call returning the true adjoint (r_j = ā_j; the calls
of a summed step return the user's own partial contributions and, at the last call, ā_j
minus their sum, so the returns sum to ā_j): the value it then gives for step k,
B_k(ā_1, ..., ā_{k-1}), differs from ā_k exactly by the error step k itself makes. A
step that is wrong as the backward ran but right in this second run has only an
inherited error; one that is wrong in the second run has an error of its own. The first
step (in the order the backward produced them) with an error of its own is
``first_wrong``; only those get a diagnosis (suite.check.diagnosis). The second run
needs the backward to go on with the value ``adjoint`` returns.

Each step is judged as check_vjp judges a tensor (suite.check.judge.judge_tensor): the
dtype's row of the one tolerance table, widened by the rounding amplification that
autodiff itself shows on these inputs (±2-ulp perturbations of the primals and the
cotangent; float64: its float32 shadow), and, below float64, also against the float64
truth.

Example::

    >>> import numpy as np, jax.numpy as jnp
    >>> from suite import mark, adjoint
    >>> def f(x):
    ...     h = mark("h", jnp.tanh(x))
    ...     return h * h
    >>> def f_back(x, dy):
    ...     dh = adjoint("h", 2 * jnp.tanh(x) * dy)
    ...     return dh * (1 - jnp.tanh(x) ** 2)
    >>> r = check_steps(f, f_back, np.linspace(-1.0, 1.0, 5))
    >>> r.status, [(s.name, s.status.value) for s in r.steps], r.first_wrong
    (<Status.PASS: 'PASS'>, [('h', 'PASS')], None)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from suite import compare as cmp
from suite.check import judge, runs
from suite.check.api import check_vjp
from suite.check.diagnosis import axis_sizes, contribution, diagnose
from suite.check.kinds import VJP, TensorSlot
from suite.check.marks import StepsError, session
from suite.check.options import (
    Options,
    arg_names,
    native_scope,
    prepare,
    require_callable,
    require_seed,
    split,
)
from suite.check.recast import cached
from suite.check.recording import recorded
from suite.check.result import CheckResult, StepResult
from suite.results import Status

__all__ = ["check_steps", "LOOPS"]

# primitives whose bodies run many times: a mark inside one has no single adjoint
LOOPS = ("scan", "while")

_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _label(fun, name):
    if name is not None:
        return str(name)
    target = getattr(fun, "fun", fun)
    return getattr(target, "__name__", None) or type(target).__name__


def _cotangent(check, cotangent):
    """The cotangent check_vjp draws for the same seed (or the user's, in fun's dtypes)."""
    with native_scope(check.layout):
        floats, ints = split(check.layout, check.arrays)
        out = jax.eval_shape(lambda *fl: check.fun(*check.layout.assemble(fl, ints)), *floats)
    if cotangent is None:
        rng = np.random.default_rng([check.seed, 0])
        return jax.tree_util.tree_map(
            lambda s: np.asarray(rng.standard_normal(s.shape), s.dtype), out)
    return jax.tree_util.tree_map(lambda c, o: np.asarray(c).astype(o.dtype), cotangent, out)


def _traced(call, eager, *args):
    """call(*args) under jax.eval_shape, or run concretely when it cannot be traced."""
    if not eager:
        try:
            jax.eval_shape(call, *args)
            return False
        except _TRACE_ERRORS:
            pass
    with jax.disable_jit():
        call(*args)
    return True


def _discover(check, ct):
    """(marks: name -> MarkInfo, backward's calls in order, eager) from one pass of each."""
    layout = check.layout
    with native_scope(layout):
        floats, ints = split(layout, check.arrays)
        with session("discover") as fwd, jax.disable_jit():
            eager = _traced(lambda *fl: check.fun(*layout.assemble(fl, ints)), False, *floats)
        lin = jax.tree_util.tree_map(jnp.asarray, ct)
        with session("record") as bwd, jax.disable_jit():
            eager = _traced(lambda fl, c: check.deriv(*layout.assemble(fl, ints), c), eager,
                            floats, lin)
    return fwd.marks, bwd.calls, eager


def _sub_jaxprs(eqn):
    """(jaxpr, the eqn's operands its inputs stand for) for each sub-jaxpr of ``eqn``."""
    out = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns") and hasattr(inner, "invars"):
                n = len(inner.invars)
                operands = eqn.invars[-n:] if n <= len(eqn.invars) else eqn.invars
                out.append((inner, list(operands)))
    return out


def _looped(jaxpr, tracked: dict) -> set:
    """The names whose zero reaches a loop primitive (scan, while) in ``jaxpr``.

    ``tracked`` maps jaxpr variables to mark names; sub-jaxprs (jit, checkpoint, cond,
    custom rules) are followed through their operands."""
    found = set()
    for eqn in jaxpr.eqns:
        names = {tracked[v] for v in eqn.invars if not hasattr(v, "val") and v in tracked}
        if not names:
            continue
        if eqn.primitive.name in LOOPS:
            found |= names
            continue
        for inner, operands in _sub_jaxprs(eqn):
            sub = {iv: tracked[ov] for iv, ov in zip(inner.invars, operands, strict=False)
                   if not hasattr(ov, "val") and ov in tracked}
            if sub:
                found |= _looped(inner, sub)
    return found


def _forward_with_zeros(fun, layout, names, floats, ints, zs):
    # the user's own jax.jit is bypassed: a jitted fun traced before (without a session)
    # would otherwise replay its cached program, marks and all skipped
    with session("zeros", zeros=dict(zip(names, zs, strict=True))), jax.disable_jit():
        return fun(*layout.assemble(floats, ints))


def _true_adjoints(fun, layout, names, floats, ints, ct, zs):
    """(d⟨ȳ, F⟩/d floats, d⟨ȳ, F⟩/d z per mark) at z = 0: autodiff of F(x; z)."""
    def f(fl, z):
        return _forward_with_zeros(fun, layout, names, fl, ints, z)
    return jax.vjp(f, tuple(floats), tuple(zs))[1](ct)


@cached
def _adjoint_program(fun, shape_layout, names):
    return jax.jit(functools.partial(_true_adjoints, fun, shape_layout, names))


def _zeros(marks, names, floats):
    """Zeros per mark in the widest floating dtype of this run's inputs."""
    dtype = max((jnp.result_type(f) for f in floats), key=lambda t: jnp.finfo(t).bits)
    return tuple(jnp.zeros(marks[n].shape, dtype) for n in names)


def _backward_runs(backward, layout, names, counts, holder, floats, ints, ct, truths):
    """The backward as it is, and again with every adjoint call returning the truth."""
    primals = layout.assemble(floats, ints)
    with session("record") as plain, jax.disable_jit():  # the user's jax.jit bypassed
        raw = backward(*primals, ct)
    with session("substitute", truths=dict(zip(names, truths, strict=True)),
                 counts=dict(counts)) as sub, jax.disable_jit():
        raw_sub = backward(*primals, ct)
    holder["plain"] = [(c.name, c.line) for c in plain.calls]
    holder["sub"] = [(c.name, c.line) for c in sub.calls]
    return ([jnp.asarray(c.value) for c in plain.calls], [jnp.asarray(c.value) for c in sub.calls],
            VJP.read(layout, raw), VJP.read(layout, raw_sub))


def _run_backward(check, names, counts, eager, truths):
    holder: dict = {}
    program = functools.partial(_backward_runs, check.deriv, check.layout, names,
                                tuple(sorted(counts.items())), holder)
    with native_scope(check.layout):
        floats, ints = split(check.layout, check.arrays)
        ct = jax.tree_util.tree_map(jnp.asarray, check.lin)
        tr = tuple(jnp.asarray(t) for t in truths)
        if eager:
            with jax.disable_jit():
                out = program(floats, ints, ct, tr)
        else:
            out = jax.jit(program)(floats, ints, ct, tr)
    plain, sub, final, final_sub = jax.tree_util.tree_map(np.asarray, out)
    return holder, plain, sub, final, final_sub


def _perturbed(check, floats, lin, sign):
    """As check_vjp's: x·(1 ± 2u·r), r = ±1 per element, the same r for both signs."""
    rng = np.random.default_rng([check.seed, 3])
    u = cmp.unit_roundoff(check.dtype)

    def move(x):
        xf = runs.as_f64(x)
        r = rng.choice([-1.0, 1.0], size=xf.shape)
        return jnp.asarray((xf * (1.0 + sign * runs.PERTURB_ULPS * u * r)).astype(
            np.asarray(x).dtype))
    return tuple(move(f) for f in floats), jax.tree_util.tree_map(move, lin)


def _adjoint_runs(check, marks, names, eager):
    """The true adjoints: native, perturbed ±, float64 truth (low dtypes) or float32 shadow."""
    program = _adjoint_program(check.fun, check.layout.shapes_only(), names)
    scope = jax.disable_jit() if eager else None

    def run(floats, ints, lin):
        zs = _zeros(marks, names, floats)
        if scope is None:
            return jax.tree_util.tree_map(np.asarray, program(floats, ints, lin, zs))
        with jax.disable_jit():
            return jax.tree_util.tree_map(
                np.asarray, _true_adjoints(check.fun, check.layout.shapes_only(), names,
                                           floats, ints, lin, zs))
    with native_scope(check.layout):
        floats, ints = split(check.layout, check.arrays)
        lin = jax.tree_util.tree_map(jnp.asarray, check.lin)
        native = run(floats, ints, lin)
        perturbed = [run(*_pair(check, floats, lin, s, ints)) for s in (1.0, -1.0)]
        shadow = None
        if check.dtype == "float64":
            def narrow(x):
                return jnp.asarray(np.asarray(x).astype(np.float32))
            shadow = run(tuple(narrow(f) for f in floats), ints,
                         jax.tree_util.tree_map(narrow, lin))
    truth = None
    if check.dtype != "float64":
        with jax.enable_x64(True):
            truth = run(*runs.float64_inputs(check))
    return native, perturbed, truth, shadow


def _pair(check, floats, lin, sign, ints):
    pf, plin = _perturbed(check, floats, lin, sign)
    return pf, ints, plin


def _sum_calls(calls, values, name, shape):
    """The step's value: the sum of its adjoint calls (reshaped when only singletons differ)."""
    parts = [np.asarray(v) for (n, _), v in zip(calls, values, strict=True) if n == name]
    fixed = [p.reshape(shape) if p.shape != shape and p.size == math.prod(shape) else p
             for p in parts]
    if any(p.shape != shape for p in fixed):
        return fixed[0] if len(fixed) == 1 else None, parts
    return np.sum(fixed, axis=0), fixed


def _judge(check, name, y, a, pert, truth, shadow):
    slot = TensorSlot(name, None, name, "")
    return judge.judge_tensor(check, 0, slot, y, a, pert, truth, None, shadow)[0]


def _step(check, name, info, k, plain_v, sub_v, sub_parts, lines, adj, sizes):
    native, perturbed, truth, shadow = adj
    a = native[1][k]
    pert = [runs.as_f64(p[1][k]) for p in perturbed]
    tr = None if truth is None else runs.as_f64(truth[1][k])
    sh = None if shadow is None else runs.as_f64(shadow[1][k])
    shape = tuple(info.shape)
    if plain_v is None or np.shape(plain_v) != shape:
        got = "shapes that do not add up" if plain_v is None else f"shape {list(np.shape(plain_v))}"
        diag = None if plain_v is None else diagnose(plain_v, np.asarray(a), 1.0, sizes)
        return StepResult(name, Status.FAIL, lines[0], math.nan, diag, math.nan, False,
                          math.nan, tuple(lines), shape,
                          f"the adjoint has {got}; the marked value is {list(shape)}")
    t_plain = _judge(check, name, plain_v, a, pert, tr, sh)
    own_ok, own, t_own = True, math.nan, None
    if sub_v is not None and np.shape(sub_v) == shape:
        t_own = _judge(check, name, sub_v, a, pert, tr, sh)
        own_ok, own = t_own.status is Status.PASS, t_own.normwise
    wrong = t_plain.status is not Status.PASS or not own_ok
    message = "" if t_plain.resolved else "not resolved in this dtype (not judged)"
    step = StepResult(name, Status.FAIL if wrong else Status.PASS, lines[0],
                      float(t_plain.normwise) if t_plain.normwise is not None else math.nan,
                      None, own, wrong and own_ok, float(t_plain.tolerance), tuple(lines), shape,
                      message)
    if wrong and not own_ok:
        a64 = runs.as_f64(a)
        y = runs.as_f64(sub_v)
        tol = float(t_own.tolerance)
        if len(sub_parts) > 1:
            found = contribution(y - a64, sub_parts, tol, float(np.linalg.norm(a64)), sizes)
            if found is not None:
                step.line, step.diagnosis = lines[found[0]], found[1]
                return step
        step.diagnosis = diagnose(y, a64, tol, sizes)
    return step


def _after(check, adj, final_sub):
    """An error after the last marked step: the cotangents from true step adjoints."""
    native, perturbed, truth, shadow = adj
    bad = []
    for k, (nm, _) in enumerate(zip(check.display, check.layout.floats, strict=True)):
        pert = [runs.as_f64(p[0][k]) for p in perturbed]
        tr = None if truth is None else runs.as_f64(truth[0][k])
        sh = None if shadow is None else runs.as_f64(shadow[0][k])
        t = _judge(check, nm, final_sub[k], native[0][k], pert, tr, sh)
        if t.status is not Status.PASS:
            bad.append(f"{nm} (normwise {t.normwise:.2e})")
    if not bad:
        return ""
    return ("with every step given its true adjoint the cotangent of " + ", ".join(bad) +
            " is still wrong: the error lies after the last marked step")


@recorded
def check_steps(fun: Callable, backward: Callable, *primals: Any, cotangent: Any = None,
                seed: int = 0, **options: Any) -> CheckResult:
    """Check a backward pass step by step: the first wrong step, its line and diagnosis.

    Args:
      fun: fun(*primals) -> out, calling ``suite.mark(name, value)`` on the intermediates
        to judge (not inside ``lax.scan`` or a loop body).
      backward: backward(*primals, cotangent) -> the cotangents of the primals (as
        check_vjp's vjp), calling ``suite.adjoint(name, value)`` with its adjoint of each
        marked value and going on with the value that call returns.
      *primals, cotangent, seed, **options: as for ``check_vjp``.

    Returns:
      A CheckResult: check_vjp's per-tensor verdict, with ``steps`` (one StepResult per
      name, in the order the backward produced them) and ``first_wrong``.

    Raises:
      ValueError: an adjoint whose name no mark has, a mark under a traced loop, a name
        marked twice, and the bad input check_vjp refuses.
    """
    opts = Options.parse("check_steps", options)
    require_callable("check_steps", "fun", fun)
    require_callable("check_steps", "backward", backward)
    require_seed("check_steps", seed)
    names = arg_names(fun, len(primals), opts.names, "check_steps")
    layout, arrays, dtype, display = prepare("check_steps", primals, names)
    check = runs.Check("check_steps", _label(fun, opts.name), VJP, fun, backward, layout,
                       arrays, dtype, display, names, opts, int(seed))
    found = None
    try:
        check = runs.locate(check.replace(lin=_cotangent(check, cotangent)))
        found = _discover(check, check.lin)
    except StepsError:
        raise
    except Exception as err:  # the user's code raised: check_vjp's result reports it
        failure = runs.first_line(err)
    if found is not None:
        marks, calls, eager = found
        for c in calls:
            if c.name not in marks:
                raise StepsError(f"check_steps: adjoint({c.name!r}) at {c.line} has no "
                                 f"matching mark in fun (marked: {sorted(marks) or 'none'})")
        _require_no_loop(check, marks, tuple(marks))
        for info in marks.values():
            if info.count > 1:
                raise StepsError(f"check_steps: mark({info.name!r}) at {info.line} was "
                                 f"called {info.count} times in one forward: a mark inside a "
                                 "traced loop (lax.scan, lax.fori_loop, lax.while_loop, "
                                 "lax.map) or a Python loop has no single adjoint; mark the "
                                 "stacked per-step values after the loop, or give each value "
                                 "its own name (a value used twice is marked once)")
    base = check_vjp.__wrapped__(fun, backward, *primals, cotangent=cotangent, seed=seed,
                                 **options)
    base.function = "check_steps"
    if found is None:
        base.notes.append(f"the steps were not judged: a pass of fun or backward raised "
                          f"{failure}")
        return base
    eager = eager or check.eager
    order = list(dict.fromkeys(c.name for c in calls))
    mark_names = tuple(marks)
    counts = {n: sum(c.name == n for c in calls) for n in order}
    try:
        adj = _adjoint_runs(check, marks, mark_names, eager)
        truths = adj[0][1]
        holder, plain, sub, final, final_sub = _run_backward(check, mark_names, counts, eager,
                                                             truths)
    except Exception as err:
        base.notes.append(f"the steps were not judged: {runs.first_line(err)}")
        return base
    sizes = axis_sizes([(nm, lf.shape) for nm, lf in zip(display, layout.floats, strict=True)])
    steps = []
    for name in order:
        k = mark_names.index(name)
        lines = [ln for n, ln in holder["plain"] if n == name]
        plain_v, _ = _sum_calls(holder["plain"], plain, name, marks[name].shape)
        sub_v, sub_parts = _sum_calls(holder["sub"], sub, name, marks[name].shape)
        steps.append(_step(check, name, marks[name], k, plain_v, sub_v, sub_parts, lines, adj,
                           sizes))
    if base.status is Status.KINK:
        for s in steps:
            if s.status is Status.FAIL:
                s.status = Status.KINK
    base.steps = steps
    base.not_judged = [n for n in mark_names if n not in counts]
    if not any(s.wrong and not s.inherited for s in steps):
        base.after_steps = _after(check, adj, final_sub)
    if any(s.status is Status.FAIL for s in steps) and base.status is Status.PASS:
        base.status = Status.FAIL
    return base


def _require_no_loop(check, marks, mark_names):
    """ValueError when a mark's zero reaches a scan or while loop in fun's jaxpr."""
    with native_scope(check.layout):
        floats, ints = split(check.layout, check.arrays)
        zs = _zeros(marks, mark_names, floats)
        try:
            closed = jax.make_jaxpr(
                lambda z: _forward_with_zeros(check.fun, check.layout, mark_names, floats, ints,
                                              z))(zs)
        except _TRACE_ERRORS:
            return  # eager code has no traced loop
    jaxpr = closed.jaxpr
    looped = _looped(jaxpr, dict(zip(jaxpr.invars, mark_names, strict=True)))
    if looped:
        name = sorted(looped)[0]
        raise StepsError(f"check_steps: mark({name!r}) at {marks[name].line} is inside a traced "
                         "loop (lax.scan, lax.fori_loop, lax.while_loop, lax.map); marks there "
                         "have no single adjoint: mark the stacked per-step values after the "
                         "loop, or unroll a short loop in Python")
