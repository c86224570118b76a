"""The checker's public entry points: check_vjp, check_custom_vjp, check_grad,
check_hessian, check_hvp.

Each validates its arguments (bad input is a ``ValueError`` naming the argument), builds
a ``runs.Check``, and takes it through the stages, one module each: ``runs`` (yours and
autodiff in the check's dtype, the float64 truth), ``probes`` (float64 finite
differences), ``judge`` (the verdict per tensor and the witness, host-side), ``extra``
(batched, determinism, zero, dtype). Every result is handed to ``recording``. An
exception in the user's code is an ERROR result naming the user's line, never a crash.

Nothing here changes global JAX settings: float64 work runs inside
``jax.enable_x64(True)`` scopes, the user's code in float32 keeps the caller's x64 and
rank-promotion settings.

Example::

    >>> import jax.numpy as jnp, numpy as np
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
import functools
import math
import os
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check import audit as audits
from suite.check import extra, judge, pairs, probes, runs
from suite.check.kinds import GRAD, HESSIAN, HVP, VJP
from suite.check.options import (
    Mismatch,
    Options,
    arg_names,
    describe,
    native_scope,
    prepare,
    require_callable,
    require_seed,
    split,
)
from suite.check.recording import recorded
from suite.check.result import CheckResult
from suite.results import Status

__all__ = ["check_vjp", "check_custom_vjp", "check_grad", "check_hessian", "check_hvp"]


def _internal_paths():
    import jaxlib
    return (os.path.dirname(jax.__file__), os.path.dirname(jaxlib.__file__),
            os.path.dirname(np.__file__), os.path.dirname(__file__), fdiff.__file__,
            cmp.__file__, contextlib.__file__, functools.__file__)


def _user_frame(err):
    """'at file:line in function: code' for the innermost frame of the user's own code."""
    internal = _internal_paths()
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(internal)]
    if not frames:
        return ""
    f = frames[-1]
    return f"\n  at {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def _error_result(function, name, dtype, message, err=None, notes=()):
    tb = "".join(traceback.format_exception(err)) if err is not None else ""
    return CheckResult(function=function, name=name, status=Status.ERROR, dtype=dtype,
                       message=message, notes=list(notes), traceback=tb)


def _run(check: runs.Check) -> CheckResult:
    start = time.perf_counter()
    try:
        result = _stages(check)
    except Mismatch as err:
        result = _error_result(check.function, check.name, check.dtype, str(err),
                               notes=check.notes)
    except Exception as err:
        result = _error_result(check.function, check.name, check.dtype,
                               f"raised {runs.first_line(err)}{_user_frame(err)}", err,
                               check.notes)
    result.seconds = time.perf_counter() - start
    return result


def _stages(check):
    check = runs.locate(check)
    if check.opts.mode == "fast" and check.kind.order == 1:
        fast = judge.fast_result(check, runs.fast_run(check))
        if fast is not None:
            return fast
        check = check.replace(opts=check.opts.replace(mode="full"))
    if check.kind.linear and check.opts.batched and check.eager:
        check.notes.append("the batched check was skipped: yours runs eagerly (op by op)")
        check = check.replace(opts=check.opts.replace(batched=False))
    native = runs.native_runs(check)
    truths = runs.truth_run(check) if check.dtype != "float64" else None
    fd = probes.fd_run(check, native.yours, native.autodiff) if check.opts.fd else None
    yours64 = None
    if check.dtype != "float64" and not check.eager:
        try:
            yours64 = runs.yours_float64(check)
        except Exception as err:
            check.notes.append(f"yours could not be run in float64 ({runs.first_line(err)}); "
                               f"its derivation was judged in {check.dtype} only")
    tensors, terms, seen = judge.judge_tensors(check, native, truths, fd, yours64)
    names = [t.name for t in tensors]
    checks = extra.extra_checks(check, native, names, [t.widening for t in tensors])
    witness = judge.witness(check, seen, native.autodiff, fd, terms) if fd is not None else None
    return judge.result(check, tensors, checks, witness, native.integers)


def _label(fun, name):
    if name is not None:
        return str(name)
    target = getattr(fun, "fun", fun)
    return getattr(target, "__name__", None) or type(target).__name__


def _random_like(rng, struct, dtype=None):
    return jax.tree_util.tree_map(
        lambda s: np.asarray(rng.standard_normal(s.shape), dtype or s.dtype), struct)


def _output_shape(check, fun):
    with native_scope(check.layout):
        floats, ints = split(check.layout, check.arrays)
        return jax.eval_shape(lambda *fl: fun(*check.layout.assemble(fl, ints)), *floats)


def _cotangent(check, fun, cotangent):
    """The cotangent: drawn from the seed, or the user's, checked against fun's output."""
    function = check.function
    out = _output_shape(check, fun)
    for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"{function}: fun's output {jax.tree_util.keystr(path) or 'value'} "
                             f"is {leaf.dtype}; only floating outputs can be differentiated")
    if cotangent is None:
        rng = np.random.default_rng([check.seed, 0])
        rng2 = np.random.default_rng([check.seed, 2])
        return _random_like(rng, out), _random_like(rng2, out)
    got_def = jax.tree_util.tree_structure(cotangent)
    out_def = jax.tree_util.tree_structure(out)
    shapes_ok = got_def == out_def and all(
        tuple(np.shape(c)) == tuple(o.shape)
        for c, o in zip(jax.tree_util.tree_leaves(cotangent), jax.tree_util.tree_leaves(out),
                        strict=True))
    if not shapes_ok:
        raise ValueError(f"{function}: cotangent must match fun's output: expected "
                         f"{describe(out)}, got {describe(cotangent)}")
    ct = jax.tree_util.tree_map(lambda c, o: np.asarray(c).astype(o.dtype), cotangent, out)
    rng2 = np.random.default_rng([check.seed, 2])
    return ct, _random_like(rng2, out)


def _new_check(function, kind, fun, deriv, primals, seed, opts, *, ints_allowed=True):
    require_seed(function, seed)
    names = arg_names(fun, len(primals), opts.names, function)
    layout, arrays, dtype, display = prepare(function, primals, names, ints_allowed=ints_allowed)
    return runs.Check(function=function, name=_label(fun, opts.name), kind=kind, fun=fun,
                      deriv=deriv, layout=layout, arrays=arrays, dtype=dtype, display=display,
                      names=names, opts=opts, seed=int(seed))


def _check_linear(check, fun, cotangent):
    try:
        lin, lin2 = _cotangent(check, fun, cotangent)
    except ValueError:
        raise
    except Exception as err:
        return _error_result(check.function, check.name, check.dtype,
                             f"fun(*primals) raised {runs.first_line(err)}", err)
    return _run(check.replace(lin=lin, lin2=lin2))


def _require_scalar(check, fun):
    try:
        out = _output_shape(check, fun)
    except Exception:
        return
    if not hasattr(out, "shape") or math.prod(out.shape) != 1:
        raise ValueError(f"{check.function}: fun must return a scalar, it returned "
                         f"{describe(out)}")


@recorded
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
    opts = Options.parse("check_vjp", options)
    require_callable("check_vjp", "fun", fun)
    require_callable("check_vjp", "vjp", vjp)
    fun, vjp, primals, cotangent, opts, note = _complex_as_pairs("check_vjp", fun, vjp, primals,
                                                                 cotangent, opts, True)
    check = _new_check("check_vjp", VJP, fun, vjp, primals, seed, opts)
    check.notes.extend(note)
    return _check_linear(check, fun, cotangent)


def _complex_as_pairs(function, fun, deriv, primals, cotangent, opts, takes_cotangent):
    """Complex primals or outputs: the check of their (re, im) pairs (see pairs.py).

    fun is traced here in the x64 scope its primals need (JAX may reuse that trace)."""
    wide = any(np.dtype(getattr(x, "dtype", np.float32)).name in ("float64", "complex128")
               for x in jax.tree_util.tree_leaves(primals))
    with jax.enable_x64(True) if wide else contextlib.nullcontext():
        try:
            complex_out = pairs.has_complex(jax.eval_shape(fun, *primals))
        except Exception:
            complex_out = False
        if not (pairs.has_complex(primals) or complex_out):
            return fun, deriv, primals, cotangent, opts, []
        names = arg_names(fun, len(primals), opts.names, function)
        opts = opts.replace(names=names, name=_label(fun, opts.name))
        return (*pairs.as_pairs(fun, deriv, primals, cotangent, takes_cotangent), opts,
                [pairs.NOTE])


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


@recorded
def check_custom_vjp(fun: Callable, *primals: Any, cotangent: Any = None, seed: int = 0,
                     audit: bool = False, **options: Any) -> CheckResult:
    """Check a ``jax.custom_vjp``'s rule against autodiff of its primal function.

    Args:
      fun: a ``jax.custom_vjp`` (its ``fun`` is differentiated by JAX for the
        reference; ``jax.vjp(fun, ...)`` runs your fwd/bwd rule). With nondiff_argnums,
        close over those arguments (functools.partial) and check a custom_vjp without.
      *primals, cotangent, seed, **options: as for ``check_vjp``.
      audit: also run the rule under jit, vmap, checkpoint, grad of grad, jax.hessian,
        jax.jvp and jvp of vjp (suite.check.audit): a row each, PASS / RAISES / WRONG;
        a WRONG row makes the check FAIL.

    Returns:
      A CheckResult.
    """
    opts = Options.parse("check_custom_vjp", options)
    if not isinstance(audit, bool):
        raise ValueError(f"check_custom_vjp: audit must be True or False, got {audit!r}")
    if not isinstance(fun, jax.custom_vjp):
        raise ValueError(f"check_custom_vjp: fun must be a jax.custom_vjp, got "
                         f"{type(fun).__name__} (use check_vjp for a separate vjp function)")
    nondiff = tuple(fun.nondiff_argnums)
    if nondiff:
        raise ValueError(f"check_custom_vjp: fun has nondiff_argnums {nondiff}; close over "
                         "those arguments (functools.partial) and check the rest")
    primal, rule = _custom_adapters(fun)
    if opts.name is None:
        opts = opts.replace(name=_label(fun, None))
    if opts.names is None:
        opts = opts.replace(names=arg_names(fun, len(primals), None, "check_custom_vjp"))
    primal, rule, primals, cotangent, opts, note = _complex_as_pairs(
        "check_custom_vjp", primal, rule, primals, cotangent, opts, True)
    check = _new_check("check_custom_vjp", VJP, primal, rule, primals, seed, opts)
    check.notes.extend(note)
    result = _check_linear(check, primal, cotangent)
    if audit and note:
        result.notes.append("audit: not run on complex primals or outputs "
                            "(the transforms are judged on real rules only)")
    elif audit and result.status is not Status.ERROR:
        lin, _ = _cotangent(check, primal, cotangent)
        audits.attach(result, audits.audit_custom_vjp(fun, check.replace(lin=lin)),
                      audits.AUDIT_NOTE_VJP)
    return result


@recorded
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
    opts = Options.parse("check_grad", options)
    require_callable("check_grad", "fun", fun)
    require_callable("check_grad", "grad", grad)
    fun, grad, primals, _, opts, note = _complex_as_pairs("check_grad", fun, grad, primals,
                                                          None, opts, False)
    check = _new_check("check_grad", GRAD, fun, grad, primals, seed, opts)
    check.notes.extend(note)
    _require_scalar(check, fun)
    return _run(check)


@recorded
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
    opts = Options.parse("check_hessian", options)
    require_callable("check_hessian", "fun", fun)
    require_callable("check_hessian", "hessian", hessian)
    if opts.mode == "fast":
        raise ValueError("check_hessian: mode='fast' is for first-order checks")
    check = _new_check("check_hessian", HESSIAN, fun, hessian, (x,), seed, opts,
                       ints_allowed=False)
    _require_scalar(check, fun)
    return _run(check)


@recorded
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
    opts = Options.parse("check_hvp", options)
    require_callable("check_hvp", "fun", fun)
    require_callable("check_hvp", "hvp", hvp)
    if opts.mode == "fast":
        raise ValueError("check_hvp: mode='fast' is for first-order checks")
    check = _new_check("check_hvp", HVP, fun, hvp, (x,), seed, opts, ints_allowed=False)
    if jax.tree_util.tree_structure(v) != jax.tree_util.tree_structure(x) or any(
            np.shape(a) != np.shape(b)
            for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(x),
                            strict=True)):
        raise ValueError(f"check_hvp: v must be shaped like x: expected {describe(x)}, "
                         f"got {describe(v)}")
    _require_scalar(check, fun)
    lin = jax.tree_util.tree_map(lambda a, lf: np.asarray(a).astype(lf),
                                 v, jax.tree_util.tree_unflatten(
                                     check.layout.treedefs[0],
                                     [lf.dtype for lf in check.layout.leaves]))
    rng = np.random.default_rng([check.seed, 2])
    lin2 = jax.tree_util.tree_map(lambda a: rng.standard_normal(np.shape(a)).astype(a.dtype),
                                  lin)
    return _run(check.replace(lin=lin, lin2=lin2))
