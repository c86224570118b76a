"""check_jvp and check_custom_jvp: forward-mode rules, judged as check_vjp judges a VJP.

``check_jvp(fun, jvp, *primals, tangents=None)`` runs yours, ``jvp(primals, tangents)
-> (out, tangent_out)`` (jax.jvp's convention), against ``jax.jvp(fun, ...)``; the
judged tensors are the leaves of ``tangent_out``, named ``out`` and its pytree path.
Each is judged per element, dtype-fair, as check_vjp judges a tensor (judge.judge_tensor:
the one tolerance table widened by autodiff's measured rounding amplification; below
float64 also against the float64 truth), and witnessed by float64 central differences of
``fun`` along the tangent, which here give *every* element of J·t (one directional
derivative): an element outside the band where finite differences side with yours is
settled in yours' favour, one where the one-sided slopes disagree is a KINK. The extra
checks: batched (vmap over two tangents), determinism, zero tangent, output dtype, and
the primal output (yours' ``out`` against ``fun(*primals)``).

``check_custom_jvp(fun, ...)`` judges a ``jax.custom_jvp``'s rule against autodiff of its
own primal function; ``audit=True`` adds the transform audit (suite.check.audit).

Example::

    >>> import jax.numpy as jnp, numpy as np
    >>> f = lambda x: jnp.sin(x) * x
    >>> f_jvp = lambda p, t: (f(p[0]), (jnp.cos(p[0]) * p[0] + jnp.sin(p[0])) * t[0])
    >>> check_jvp(f, f_jvp, np.linspace(0.1, 1.0, 4)).status
    <Status.PASS: 'PASS'>
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check import audit as audit_mod
from suite.check import extra, judge, runs
from suite.check.kinds import VJP, TensorSlot
from suite.check.options import (
    Options,
    arg_names,
    describe,
    native_scope,
    prepare,
    require_callable,
    require_seed,
    split,
)
from suite.check.recast import cached
from suite.check.recording import recorded
from suite.check.result import CheckOutcome, CheckResult, Kink, Witness
from suite.results import Status

__all__ = ["check_jvp", "check_custom_jvp"]

_TRACE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                 jax.errors.TracerIntegerConversionError, jax.errors.TracerBoolConversionError)


def _label(fun, name):
    if name is not None:
        return str(name)
    target = getattr(fun, "fun", fun)
    return getattr(target, "__name__", None) or type(target).__name__


def _full_tangents(layout, tans, ints):
    """Per primal, its tangent pytree: the float tangents, float0 zeros at integer leaves."""
    zeros = [np.zeros(np.shape(i), jax.dtypes.float0) for i in ints]
    return layout.assemble(tans, zeros)


def _yours(jvp, layout, floats, ints, tans):
    out, tout = jvp(layout.assemble(floats, ints), _full_tangents(layout, tans, ints))
    return (tuple(jnp.asarray(o) for o in jax.tree_util.tree_leaves(out)),
            tuple(jnp.asarray(t) for t in jax.tree_util.tree_leaves(tout)))


def _yours_batched(jvp, layout, floats, ints, tans, batch):
    one = _yours(jvp, layout, floats, ints, tans)
    if batch is None:
        return one, None
    return one, jax.vmap(lambda t: _yours(jvp, layout, floats, ints, t)[1])(batch)


def _autodiff(fun, layout, floats, ints, tans):
    def f(*fl):
        return fun(*layout.assemble(fl, ints))
    out, tout = jax.jvp(f, tuple(floats), tuple(tans))
    return (tuple(jax.tree_util.tree_leaves(out)), tuple(jax.tree_util.tree_leaves(tout)))


def _fd_values(fun, layout, floats, ints, dense, h):
    """float64: every output leaf of fun at x + c·h·d for c in OFFSETS (trailing axis)."""
    flat = jnp.concatenate([f.ravel() for f in floats])

    def at(c):
        x = flat + c * dense
        return tuple(jax.tree_util.tree_leaves(fun(*layout.assemble(layout.unflat(x), ints))))
    vals = jax.vmap(at)(jnp.asarray(fdiff.OFFSETS, flat.dtype))
    return tuple(jnp.moveaxis(v, 0, -1) for v in vals)


@cached
def _programs(fun, jvp, layout):
    return (jax.jit(functools.partial(_yours_batched, jvp, layout)),
            functools.partial(_yours_batched, jvp, layout),
            jax.jit(functools.partial(_autodiff, fun, layout.shapes_only())),
            jax.jit(functools.partial(_fd_values, fun, layout.shapes_only())))


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _tangents(function, layout, arrays, names, tangents, seed):
    """The float tangents (one per float leaf, in its dtype): drawn, or the user's, checked."""
    floats = [lf for lf in layout.leaves if lf.is_float]
    if tangents is None:
        rng = np.random.default_rng([seed, 0])
        return tuple(np.asarray(rng.standard_normal(lf.shape), lf.dtype) for lf in floats)
    tangents = tuple(tangents) if isinstance(tangents, (tuple, list)) else (tangents,)
    if len(tangents) != len(layout.treedefs):
        raise ValueError(f"{function}: tangents must have one entry per primal "
                         f"({len(layout.treedefs)}), got {len(tangents)}")
    out = []
    for i, (t, td) in enumerate(zip(tangents, layout.treedefs, strict=True)):
        leaves, tdef = jax.tree_util.tree_flatten(t)
        mine = [lf for lf in layout.leaves if lf.arg == i]
        if tdef != td or any(np.shape(a) != lf.shape for a, lf in zip(leaves, mine, strict=True)):
            raise ValueError(f"{function}: tangents[{i}] must be shaped like primal {i} "
                             f"({names[i]}), got {describe(t)}")
        out += [np.asarray(a).astype(lf.dtype) for a, lf in zip(leaves, mine, strict=True)
                if lf.is_float]
    return tuple(out)


def _perturb(rng, x, dtype, sign):
    u = cmp.unit_roundoff(dtype)
    xf = runs.as_f64(x)
    r = rng.choice([-1.0, 1.0], size=xf.shape)
    return jnp.asarray((xf * (1.0 + sign * runs.PERTURB_ULPS * u * r)).astype(np.asarray(x).dtype))


def _settle(t, y, a, tol, est):
    """Elements outside the band, judged by the float64 finite differences at each."""
    band = cmp.band(a, tol)
    outside = np.abs(y - a) > band
    if not outside.any():
        return y
    masked, kinks, rescued = y.copy(), [], 0
    c, ce = np.asarray(est.central), np.asarray(est.central_error)
    kink = np.asarray(fdiff.one_sided_disagree(est))
    for flat_index in np.flatnonzero(outside):
        idx = tuple(int(i) for i in np.unravel_index(flat_index, np.shape(y)))
        yi, ai = float(y[idx]), float(a[idx])
        if kink[idx]:
            r, l = float(est.right[idx]), float(est.left[idx])
            slack = cmp.FD_SAFETY * float(max(est.right_error[idx], est.left_error[idx])) \
                + band[idx]
            near = "right" if abs(yi - r) <= slack else "left" if abs(yi - l) <= slack else (
                "between" if min(l, r) - slack <= yi <= max(l, r) + slack else "neither")
            kinks.append(Kink(tuple(int(i) for i in idx), l, r, yi, ai, near))
            if near != "neither":
                masked[idx] = ai
        elif abs(yi - float(c[idx])) <= cmp.FD_SAFETY * float(ce[idx]) + band[idx] \
                < abs(ai - float(c[idx])):
            masked[idx] = ai
            rescued += 1
    if not kinks and not rescued:
        return y
    comp = cmp.compare_leaf(masked, a, tol, t.name)
    t.kinks = kinks
    notes = []
    if kinks:
        notes.append(f"{len(kinks)} element(s) at a kink, judged apart")
    if rescued:
        notes.append(f"{rescued} element(s) where finite differences side with yours "
                     "against autodiff")
    t.message = "; ".join(notes)
    if comp.passed and not any(k.matched == "neither" for k in kinks):
        t.status = Status.KINK if kinks else Status.PASS
    t.normwise, t.max_abs, t.max_rel = comp.normwise, comp.max_abs, comp.max_rel
    t.frac_outside = comp.frac_outside
    return masked


def _stages(check, fun, jvp, tans, eager):
    layout, opts, dtype = check.layout, check.opts, check.dtype
    jit_yours, plain_yours, autodiff, fd_program = _programs(fun, jvp, layout)
    yours_call = plain_yours if eager else jit_yours
    scope = jax.disable_jit() if eager else contextlib.nullcontext()
    with native_scope(layout):
        floats, ints = split(layout, check.arrays)
        t_dev = tuple(jnp.asarray(t) for t in tans)
        rng2 = np.random.default_rng([check.seed, 2])
        t2 = tuple(jnp.asarray(rng2.standard_normal(np.shape(t)).astype(np.asarray(t).dtype))
                   for t in tans)
        batch = None if eager or not opts.batched else tuple(
            jnp.stack([a, b]) for a, b in zip(t_dev, t2, strict=True))
        batched_error = None
        try:
            with scope:
                (y_out, y_t), batched = _host(yours_call(floats, ints, t_dev, batch))
        except Exception as err:
            if batch is None:
                raise
            batched_error, batched = err, None
            with scope:
                (y_out, y_t), _ = _host(yours_call(floats, ints, t_dev, None))
        a_out, a_t = _host(autodiff(floats, ints, t_dev))
        if len(y_t) != len(a_t) or any(np.shape(p) != np.shape(q)
                                       for p, q in zip(y_t, a_t, strict=True)):
            raise ValueError(f"your jvp returned tangents {[list(np.shape(p)) for p in y_t]}; "
                             f"fun's output is {[list(np.shape(q)) for q in a_t]}")
        with scope:
            again = _host(yours_call(floats, ints, t_dev, None))[0][1] if opts.determinism \
                else None
            zero = _host(yours_call(floats, ints, tuple(jnp.zeros_like(t) for t in t_dev),
                                    None))[0][1] if opts.zero else None
            second = _host(yours_call(floats, ints, t2, None))[0][1] if batched is not None \
                else None
        perturbed = []
        for sign in (1.0, -1.0):
            rng = np.random.default_rng([check.seed, 3])
            pf = tuple(_perturb(rng, f, dtype, sign) for f in floats)
            pt = tuple(_perturb(rng, t, dtype, sign) for t in t_dev)
            perturbed.append(_host(autodiff(pf, ints, pt)))
        shadow = None
        if dtype == "float64":
            def narrow(x):
                return jnp.asarray(np.asarray(x).astype(np.float32))
            shadow = _host(autodiff(tuple(narrow(f) for f in floats), ints,
                                    tuple(narrow(t) for t in t_dev)))
    truth = None
    with jax.enable_x64(True):
        floats64 = tuple(jnp.asarray(runs.as_f64(a)) for a, lf in
                         zip(check.arrays, layout.leaves, strict=True) if lf.is_float)
        ints64 = tuple(jnp.asarray(a) for a, lf in zip(check.arrays, layout.leaves, strict=True)
                       if not lf.is_float)
        t64 = tuple(jnp.asarray(runs.as_f64(t)) for t in tans)
        if dtype != "float64":
            truth = _host(autodiff(floats64, ints64, t64))
        est = None
        if opts.fd:
            flat = np.concatenate([runs.as_f64(f).ravel() for f in floats64])
            tflat = np.concatenate([runs.as_f64(t).ravel() for t in t64])
            tn = float(np.linalg.norm(tflat))
            h = fdiff.step(np.float64, 1)
            dense = fdiff.exact_step(flat, h * tflat / tn) if tn > 0 else np.zeros_like(flat)
            h_eff = h / tn if tn > 0 else 1.0
            vals = _host(fd_program(floats64, ints64, jnp.asarray(dense), 1.0))
            est = [fdiff.richardson(v, h_eff, order=1) for v in vals]
    out_def = jax.tree_util.tree_structure(jax.eval_shape(
        lambda *fl: fun(*layout.assemble(fl, split(layout, check.arrays)[1])),
        *split(layout, check.arrays)[0]))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        jax.tree_util.tree_unflatten(out_def, list(range(out_def.num_leaves))))[0]]
    tensors, terms = [], []
    for k, path in enumerate(paths):
        name = f"out{path}"
        slot = TensorSlot(name, None, "out", path)
        pert = [runs.as_f64(p[1][k]) for p in perturbed]
        tr = None if truth is None else runs.as_f64(truth[1][k])
        sh = None if shadow is None else runs.as_f64(shadow[1][k])
        t, term, _ = judge.judge_tensor(check, k, slot, y_t[k], a_t[k], pert, tr, None, sh)
        y64, a64 = runs.as_f64(y_t[k]), runs.as_f64(a_t[k])
        if est is not None:
            e = est[k]
            tol = cmp.tolerance(dtype).widened(t.widening)
            if t.status is Status.FAIL and t.resolved:
                _settle(t, y64, a64, tol, e)
            if t.worst_index is not None:
                t.finite_differences = float(np.asarray(e.central)[t.worst_index])
                t.fd_error = float(np.asarray(e.central_error)[t.worst_index])
        tensors.append(t)
        terms.append(term)
    names = [t.name for t in tensors]
    tols = [cmp.tolerance(dtype).widened(t.widening) for t in tensors]
    checks = []
    if opts.batched and not eager:
        nat = runs.NativeRuns(yours=y_t, autodiff=a_t, perturbed=[], batched=batched,
                              batched_error=batched_error, second=second)
        checks.append(extra.batched_check(nat, names, tols))
    if opts.determinism:
        checks.append(extra.determinism_check(y_t, again, names))
    if opts.zero:
        checks.append(_zero_check(zero, a_t, names, tols))
    if opts.dtype:
        checks.append(extra.dtype_check(y_t, [np.asarray(a).dtype.name for a in a_out], names))
    checks.append(_primal_check(y_out, a_out, perturbed, dtype, paths))
    witness = _witness(check, y_t, a_t, est, terms) if est is not None else None
    return judge.result(check, tensors, checks, witness)


def _zero_check(zeros, refs, names, tols):
    for nm, z, a, tol in zip(names, zeros, refs, tols, strict=True):
        z = runs.as_f64(z)
        scale = float(np.max(np.abs(runs.as_f64(a)))) if np.size(a) else 0.0
        bad = ~np.isfinite(z) | (np.abs(z) > tol.atol * scale)
        if bad.any():
            i = np.unravel_index(int(np.argmax(bad)), z.shape) if z.size else ()
            return CheckOutcome("zero tangent", Status.FAIL,
                                f"{nm}: a zero tangent gives {float(z[i]):.8g} at "
                                f"{tuple(int(q) for q in i)} (a JVP is linear: it must give 0)")
    return CheckOutcome("zero tangent", Status.PASS)


def _primal_check(y_out, a_out, perturbed, dtype, paths):
    """Yours' primal output against fun(*primals), to the forward's own rounding."""
    for k, (y, a) in enumerate(zip(y_out, a_out, strict=True)):
        pert = [runs.as_f64(p[0][k]) for p in perturbed]
        _, tol, _ = judge.widen(dtype, runs.as_f64(a), pert, None)
        comp = cmp.compare_leaf(runs.as_f64(y), runs.as_f64(a), tol, f"out{paths[k]}")
        if not comp.passed:
            return CheckOutcome("primal output", Status.FAIL,
                                f"out{paths[k]}: your jvp's primal output differs from "
                                f"fun(*primals) (normwise {comp.normwise:.1e})")
    return CheckOutcome("primal output", Status.PASS)


def _witness(check, y_t, a_t, est, terms):
    """<w, J t> for a random unit w over the outputs: finite differences, yours, autodiff."""
    rng = np.random.default_rng([check.seed, 1])
    ws = [rng.standard_normal(np.shape(a)) for a in a_t]
    wn = math.sqrt(sum(float(np.vdot(w, w)) for w in ws)) or 1.0
    ws = [w / wn for w in ws]
    value = sum(float(np.vdot(w, np.asarray(e.central))) for w, e in zip(ws, est, strict=True))
    error = sum(float(np.vdot(np.abs(w), np.asarray(e.central_error)))
                for w, e in zip(ws, est, strict=True))
    p_y = sum(float(np.vdot(w, runs.as_f64(y))) for w, y in zip(ws, y_t, strict=True))
    p_a = sum(float(np.vdot(w, runs.as_f64(a))) for w, a in zip(ws, a_t, strict=True))
    scale = math.sqrt(sum(float(np.vdot(runs.as_f64(a), runs.as_f64(a))) for a in a_t))
    share = sum(term * float(np.linalg.norm(runs.as_f64(a))) for term, a in
                zip(terms, a_t, strict=True))
    tol = cmp.FD_SAFETY * error + cmp.FD_TOLERANCE[1] * scale + share
    from_fd = [abs(value - p_y) <= tol, abs(value - p_a) <= tol]
    verdict = "agrees" if from_fd[0] else "disagrees" if from_fd[1] else "inconclusive"
    return Witness(value=value, error=error, yours=p_y, autodiff=p_a, tolerance=tol,
                   verdict=verdict)


def _run(function, fun, jvp, primals, tangents, seed, opts):
    require_seed(function, seed)
    names = arg_names(fun, len(primals), opts.names, function)
    layout, arrays, dtype, display = prepare(function, primals, names)
    tans = _tangents(function, layout, arrays, names, tangents, int(seed))
    check = runs.Check(function, _label(fun, opts.name), VJP, fun, jvp, layout, arrays, dtype,
                       display, names, opts, int(seed))
    start = time.perf_counter()
    eager = not opts.jit
    if not eager:
        with native_scope(layout):
            floats, ints = split(layout, arrays)
            try:
                jax.eval_shape(lambda fl, t: _yours(jvp, layout, fl, ints, t), floats,
                               tuple(jnp.asarray(t) for t in tans))
            except _TRACE_ERRORS as err:
                check.notes.append(f"your jvp cannot be traced ({runs.first_line(err)}); it "
                                   "was run eagerly (op by op)")
                eager = True
            except Exception:
                pass
    try:
        result = _stages(check, fun, jvp, tans, eager)
    except Exception as err:
        result = CheckResult(function=function, name=check.name, status=Status.ERROR,
                             dtype=dtype, message=f"raised {runs.first_line(err)}",
                             notes=list(check.notes))
    result.seconds = time.perf_counter() - start
    return result, check, tans


@recorded
def check_jvp(fun: Callable, jvp: Callable, *primals: Any, tangents: Any = None, seed: int = 0,
              **options: Any) -> CheckResult:
    """Check ``jvp(primals, tangents) -> (out, tangent_out)`` against ``jax.jvp(fun, ...)``.

    Args:
      fun: fun(*primals) -> any pytree of floating arrays.
      jvp: jvp(primals: tuple, tangents: tuple) -> (out, tangent_out), jax.jvp's
        convention (integer primals get float0 tangents, as jax.jvp gives them).
      *primals: arrays or pytrees of arrays.
      tangents: a tuple with one entry per primal, shaped like it; by default standard
        normal from ``seed``.
      seed, **options: as for ``check_vjp``.

    Returns:
      A CheckResult, one tensor per leaf of tangent_out (``out``, ``out[0]``, ...).
    """
    opts = Options.parse("check_jvp", options)
    require_callable("check_jvp", "fun", fun)
    require_callable("check_jvp", "jvp", jvp)
    return _run("check_jvp", fun, jvp, primals, tangents, seed, opts)[0]


@functools.lru_cache(maxsize=64)
def _custom_rule(fun):
    def rule(primals, tangents):
        return jax.jvp(fun, tuple(primals), tuple(tangents))
    return rule


@recorded
def check_custom_jvp(fun: Callable, *primals: Any, tangents: Any = None, seed: int = 0,
                     audit: bool = False, **options: Any) -> CheckResult:
    """Check a ``jax.custom_jvp``'s rule against autodiff of its own primal function.

    Args:
      fun: a ``jax.custom_jvp`` (``jax.jvp(fun, ...)`` runs your rule; its ``fun`` is
        differentiated by JAX for the reference). Close over nondiff_argnums.
      *primals, tangents, seed, **options: as for ``check_jvp``.
      audit: also run the rule under jit, vmap, checkpoint, reverse mode and
        jax.hessian (suite.check.audit): a row each, PASS / RAISES / WRONG; a WRONG row
        makes the check FAIL.

    Returns:
      A CheckResult.
    """
    opts = Options.parse("check_custom_jvp", options)
    if not isinstance(fun, jax.custom_jvp):
        raise ValueError(f"check_custom_jvp: fun must be a jax.custom_jvp, got "
                         f"{type(fun).__name__} (use check_jvp for a separate jvp function)")
    if tuple(fun.nondiff_argnums):
        raise ValueError(f"check_custom_jvp: fun has nondiff_argnums "
                         f"{tuple(fun.nondiff_argnums)}; close over those arguments "
                         "(functools.partial) and check the rest")
    if not isinstance(audit, bool):
        raise ValueError(f"check_custom_jvp: audit must be True or False, got {audit!r}")
    if opts.name is None:
        opts = opts.replace(name=_label(fun, None))
    if opts.names is None:
        opts = opts.replace(names=arg_names(fun, len(primals), None, "check_custom_jvp"))
    result, check, tans = _run("check_custom_jvp", fun.fun, _custom_rule(fun), primals,
                               tangents, seed, opts)
    if audit:
        audit_mod.attach(result, audit_mod.audit_custom_jvp(fun, check, tans),
                         audit_mod.AUDIT_NOTE_JVP)
    return result
