"""The transform audit of a custom rule (``audit=True``): is it right under JAX's transforms?

A rule can be right when called alone and silently wrong under a transform: a
``pure_callback`` with the wrong ``vmap_method`` under ``vmap``, residuals passed
through ``stop_gradient`` under a second derivative. Each row runs yours under one
transform and the same transform of the primal function (autodiff: the right answer),
in the check's dtype, and says

- PASS: they agree (within the dtype's row of the tolerance table, widened by the
  rounding amplification the reference shows on these inputs: below float64 against the
  reference in float64, in float64 against its float32 shadow, as judge.widen does);
Every row runs compiled (``jax.jit`` of the transformed function), as transformed code
runs in practice; the ``jit`` row is the rule under jit alone.

- RAISES: yours raised under the transform (JAX's own message, its first line); the
  check does not fail for it (what a transform refuses is not silently wrong);
- WRONG: yours ran and differs (the error is given); the check FAILs.

Rows (a row is left out when the reference itself cannot run under the transform):

- custom_vjp: jit, vmap (over a batch of two points and cotangents), checkpoint,
  grad of grad (reverse over reverse), jax.hessian (jacfwd of jacrev; over
  ravel_pytree of the float primals, as forward-over-reverse H·v beyond 1,000 of them),
  jax.jvp (raises by design: a custom_vjp has no forward-mode rule), jvp of vjp.
- custom_jvp: jit, vmap, checkpoint, vjp (reverse mode transposes your rule),
  jax.hessian.

Second-order rows differentiate the scalar ⟨cotangent, f(x)⟩.

Example::

    >>> [AuditRow("jit", "PASS").verdict]
    ['PASS']
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from suite import compare as cmp
from suite.check import judge, runs
from suite.check.options import native_scope, split
from suite.check.result import CheckResult
from suite.check.stepresult import AUDIT_NOTE_JVP, AUDIT_NOTE_VJP, AuditRow
from suite.results import Status

__all__ = ["audit_custom_vjp", "audit_custom_jvp", "attach", "AuditRow", "AUDIT_NOTE_VJP",
           "AUDIT_NOTE_JVP", "HESSIAN_LIMIT"]

HESSIAN_LIMIT = 1000  # float parameters up to which jax.hessian is formed in full


def attach(result: CheckResult, rows: list, note: str) -> CheckResult:
    """Put the audit rows on ``result``; a WRONG row makes a PASS or KINK result FAIL."""
    result.audit, result.audit_note = list(rows), note
    if any(r.verdict == "WRONG" for r in rows) and result.status in (Status.PASS, Status.KINK):
        result.status = Status.FAIL
    return result


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _widened(check, ref_fn, args64, args32):
    """(truth, shadow): the reference in float64 (low dtypes) or on float32-rounded inputs."""
    truth = shadow = None
    try:
        if check.dtype != "float64":
            with jax.enable_x64(True):
                truth = _leaves(ref_fn(*args64()))
        else:
            shadow = _leaves(ref_fn(*args32()))
    except Exception:  # the widening is then the table's row alone
        pass
    return truth, shadow


def _row(check, transform, yours_fn, ref_fn, args, args64, args32):
    """One row: yours and the reference under ``transform`` on ``args()``."""
    with native_scope(check.layout):
        try:
            ref = _leaves(ref_fn(*args()))
        except Exception:
            return None
        try:
            got = _leaves(yours_fn(*args()))
        except Exception as err:
            return AuditRow(transform, "RAISES", runs.first_line(err))
        truth, shadow = _widened(check, ref_fn, args64, args32)
    if len(got) != len(ref):
        return AuditRow(transform, "WRONG", f"{len(got)} results where the reference gives "
                        f"{len(ref)}")
    worst = None
    for k, (y, a) in enumerate(zip(got, ref, strict=True)):
        if np.shape(y) != np.shape(a):
            return AuditRow(transform, "WRONG", f"result {k}: shape {list(np.shape(y))}, "
                            f"expected {list(np.shape(a))}")
        a64 = runs.as_f64(a)
        tr = None if truth is None else runs.as_f64(truth[k])
        sh = None if shadow is None else runs.as_f64(shadow[k])
        _, tol, _ = judge.widen(check.dtype, a64, [a64, a64], tr, sh)
        comp = cmp.compare_leaf(runs.as_f64(y), a64, tol, f"result {k}")
        if not comp.passed and (worst is None or comp.normwise > worst[1]):
            worst = (k, comp.normwise, tol.normwise, comp.worst_index, comp.worst_actual,
                     comp.worst_expected)
    if worst is None:
        return AuditRow(transform, "PASS")
    k, nw, tn, idx, ya, ye = worst
    return AuditRow(transform, "WRONG", f"{_what(check, transform, k)}: normwise {nw:.2e} "
                    f"(tolerance {tn:.1e}); at {idx}: yours {ya:.8g}, autodiff {ye:.8g}")


def _what(check, transform, k):
    names = list(check.display)
    if transform in ("jax.jvp", "jit (jvp)", "vmap (jvp)", "checkpoint (jvp)"):
        return f"tangent output {k}"
    if transform == "jax.hessian":
        return "the Hessian of ⟨cotangent, f⟩"
    return names[k % len(names)] if names else f"result {k}"


def _point(check):
    """The float leaves and integer leaves of the check's point, and a second point."""
    floats, ints = split(check.layout, check.arrays)
    rng = np.random.default_rng([check.seed, 7])
    second = tuple(jnp.asarray((runs.as_f64(f) + 0.1 * (float(np.std(runs.as_f64(f))) or 1.0)
                                * rng.standard_normal(np.shape(f))).astype(np.asarray(f).dtype))
                   for f in floats)
    return floats, ints, second


def _random_like(seed, tree):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.standard_normal(np.shape(a)).astype(np.asarray(a).dtype)), tree)


def _widen_args(arrays):
    return tuple(jax.tree_util.tree_map(lambda a: jnp.asarray(runs.as_f64(a)), x)
                 for x in arrays)


def _narrow_args(arrays):
    return tuple(jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a).astype(np.float32))
        if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a), x)
        for x in arrays)


def _rows(check, specs, base_args):
    """Run each (transform, yours, reference) on the same arguments (and widened/narrowed)."""
    out = []
    host = [jax.tree_util.tree_map(np.asarray, a) for a in base_args]
    for transform, yours_fn, ref_fn in specs:  # compiled: one program per row and dtype
        row = _row(check, transform, jax.jit(yours_fn), jax.jit(ref_fn),
                   lambda: tuple(jax.tree_util.tree_map(jnp.asarray, a) for a in host),
                   lambda: _widen_args(host), lambda: _narrow_args(host))
        if row is not None:
            out.append(row)
    return out


def _scalar(f: Callable, layout, ints, ct):
    """x (float leaves) -> ⟨ct, f(x)⟩."""
    def g(fl):
        out = f(*layout.assemble(fl, ints))
        return sum(jnp.sum(c * o) for c, o in zip(jax.tree_util.tree_leaves(ct),
                                                  jax.tree_util.tree_leaves(out), strict=True))
    return g


def _hessian_fn(f, layout, ints_of, p):
    """jax.hessian of ⟨ct, f⟩ over ravel_pytree(floats), or H·v beyond HESSIAN_LIMIT."""
    def run(fl, ct, v):
        g = _scalar(f, layout, ints_of(fl), ct)
        flat, unravel = ravel_pytree(tuple(fl))
        if p <= HESSIAN_LIMIT:
            return jax.hessian(lambda q: g(unravel(q)))(flat)
        return jax.jvp(jax.grad(lambda q: g(unravel(q))), (flat,), (v,))[1]
    return run


def audit_custom_vjp(fun: Any, check: runs.Check) -> list:
    """The audit rows of a custom_vjp ``fun`` at the check's point and cotangent."""
    layout, primal = check.layout, fun.fun
    with native_scope(layout):
        floats, ints, second = _point(check)
        ct = jax.tree_util.tree_map(jnp.asarray, check.lin)
        ct2 = _random_like([check.seed, 8], ct)
        t = _random_like([check.seed, 9], floats)
        w = _random_like([check.seed, 10], floats)
    p = sum(math.prod(lf.shape) for lf in layout.floats)
    rng = np.random.default_rng([check.seed, 11])
    v = np.asarray(rng.standard_normal(p), np.asarray(floats[0]).dtype)

    def vjp_of(f):
        def run(fl, c):
            return jax.vjp(lambda *x: f(*layout.assemble(x, ints)), *fl)[1](c)
        return run

    def vmapped(f):
        inner = vjp_of(f)
        return lambda fl, fl2, c, c2: jax.vmap(inner)(
            tuple(jnp.stack([a, b]) for a, b in zip(fl, fl2, strict=True)),
            jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), c, c2))

    def per_point(f):
        inner = vjp_of(f)
        return lambda fl, fl2, c, c2: jax.tree_util.tree_map(
            lambda a, b: jnp.stack([a, b]), inner(fl, c), inner(fl2, c2))

    def checkpointed(f):
        return vjp_of(jax.checkpoint(f))

    def grad_of_grad(f):
        def run(fl, c, wv):
            g = _scalar(f, layout, ints, c)
            return jax.grad(lambda x: sum(jnp.vdot(a, b) for a, b in
                                          zip(wv, jax.grad(g)(x), strict=True)))(tuple(fl))
        return run

    def jvp_fn(f):
        return lambda fl, tv: jax.jvp(lambda *x: f(*layout.assemble(x, ints)), tuple(fl),
                                      tuple(tv))

    def jvp_of_vjp(f):
        inner = vjp_of(f)
        return lambda fl, c, tv: jax.jvp(lambda *x: inner(x, c), tuple(fl), tuple(tv))[1]

    hess = _hessian_fn  # ints are fixed here
    rows = []
    rows += _rows(check, [("jit", vjp_of(fun), vjp_of(primal)),
                          ("checkpoint", checkpointed(fun), checkpointed(primal))],
                  (floats, ct))
    rows[1:1] = _rows(check, [("vmap", vmapped(fun), per_point(primal))],
                      (floats, second, ct, ct2))
    rows += _rows(check, [("grad of grad", grad_of_grad(fun), grad_of_grad(primal))],
                  (floats, ct, w))
    rows += _rows(check, [("jax.hessian", hess(fun, layout, lambda fl: ints, p),
                           hess(primal, layout, lambda fl: ints, p))], (floats, ct, v))
    rows += _rows(check, [("jax.jvp", jvp_fn(fun), jvp_fn(primal))], (floats, t))
    rows += _rows(check, [("jvp of vjp", jvp_of_vjp(fun), jvp_of_vjp(primal))], (floats, ct, t))
    return rows


def audit_custom_jvp(fun: Any, check: runs.Check, tans: tuple) -> list:
    """The audit rows of a custom_jvp ``fun`` at the check's point and tangents."""
    layout, primal = check.layout, fun.fun
    with native_scope(layout):
        floats, ints, second = _point(check)
        t = tuple(jnp.asarray(x) for x in tans)
        t2 = _random_like([check.seed, 9], t)
        out = jax.eval_shape(lambda *fl: primal(*layout.assemble(fl, ints)), *floats)
        ct = jax.tree_util.tree_map(
            lambda s: jnp.asarray(np.random.default_rng([check.seed, 0]).standard_normal(
                s.shape).astype(s.dtype)), out)
    p = sum(math.prod(lf.shape) for lf in layout.floats)
    rng = np.random.default_rng([check.seed, 11])
    v = np.asarray(rng.standard_normal(p), np.asarray(floats[0]).dtype)

    def jvp_fn(f):
        return lambda fl, tv: jax.jvp(lambda *x: f(*layout.assemble(x, ints)), tuple(fl),
                                      tuple(tv))

    def vmapped(f):
        inner = jvp_fn(f)
        return lambda fl, fl2, tv, tv2: jax.vmap(inner)(
            tuple(jnp.stack([a, b]) for a, b in zip(fl, fl2, strict=True)),
            tuple(jnp.stack([a, b]) for a, b in zip(tv, tv2, strict=True)))

    def per_point(f):
        inner = jvp_fn(f)
        return lambda fl, fl2, tv, tv2: jax.tree_util.tree_map(
            lambda a, b: jnp.stack([a, b]), inner(fl, tv), inner(fl2, tv2))

    def vjp_of(f):
        return lambda fl, c: jax.vjp(lambda *x: f(*layout.assemble(x, ints)), *fl)[1](c)

    rows = []
    rows += _rows(check, [("jit (jvp)", jvp_fn(fun), jvp_fn(primal))],
                  (floats, t))
    rows += _rows(check, [("vmap (jvp)", vmapped(fun), per_point(primal))],
                  (floats, second, t, t2))
    rows += _rows(check, [("checkpoint (jvp)", jvp_fn(jax.checkpoint(fun)),
                           jvp_fn(jax.checkpoint(primal)))], (floats, t))
    rows += _rows(check, [("vjp (transposed rule)", vjp_of(fun), vjp_of(primal))],
                  (floats, ct))
    rows += _rows(check, [("jax.hessian", _hessian_fn(fun, layout, lambda fl: ints, p),
                           _hessian_fn(primal, layout, lambda fl: ints, p))], (floats, ct, v))
    return rows
