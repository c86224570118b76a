"""The checker's float64 finite differences: the witness direction(s) and element probes.

``fd_run`` evaluates, in one compiled float64 program, the scalar φ (kinds.Kind.phi)
at the points every finite difference needs: for a first-order check, along the random
witness direction and along each probed element (the worst element of each tensor, then
those furthest outside the table's band); for a second-order check, second differences
along the witness direction(s) and the polarisation pairs of the worst elements. It
returns a ``Probes`` record; ``probe_estimate`` and ``polarized`` turn its rows into
Richardson estimates (``reference.finite_diff``).

Example::

    >>> import numpy as np
    >>> from suite.check.options import Options
    >>> plan, outside = probe_plan(Options(max_probes=1), "float64",
    ...                            [np.array([1.0, 2.0])], [np.array([1.0, 3.0])])
    >>> plan, outside
    ([(0, 1, 1)], 1)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from reference import finite_diff as fdiff
from suite import compare as cmp
from suite.check.kinds import GRAD, HESSIAN
from suite.check.options import Options
from suite.check.recast import cached, retyped
from suite.check.runs import Check, as_f64, float64_inputs

__all__ = ["Probes", "probe_plan", "fd_run", "probe_estimate", "polarized"]

# Finite-difference rows are vmapped together while the copies of the point stay below this
# many elements (~400 MB in float64); beyond it, rows run one after another (each row's
# seven points still vmapped), so a large function is not evaluated hundreds of times at
# once.
_VMAP_ELEMENTS = 50_000_000


@dataclasses.dataclass
class Probes:
    """The finite-difference evaluations of one check, on the host.

    ``dir``: the witness rows (first order: one row of φ at x + c·h·v; second order: one
    row per direction in ``directions``); ``probe``: first order, one row per entry of
    ``plan`` (tensor k, flat index i, global index g) with steps ``hs``; ``vdir``: the
    witness direction actually taken, per float leaf; ``phi_abs``: |φ|'s scale.
    """

    h_dir: float
    phi_abs: float = 0.0
    dir: Any = None
    probe: Any = None
    plan: list = dataclasses.field(default_factory=list)
    vdir: list = dataclasses.field(default_factory=list)
    hs: Any = None
    witness: tuple = ()                 # second order: (w, |v| or None)
    elements: dict = dataclasses.field(default_factory=dict)  # k -> (index, row+, row-)
    vnorm: float | None = None


def _phi(kind, fun, layout, flat, ints, lin):
    """The scalar finite differences differentiate, and the magnitude its rounding scales with."""
    return kind.phi(fun(*layout.assemble(layout.unflat(flat), ints)), lin)


def _map(f, xs, vectorize):
    return jax.vmap(f)(xs) if vectorize else jax.lax.map(f, xs)


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


@cached
def _fd_program(kind, fun, shape_layout):
    return jax.jit(functools.partial(_fd_values, kind, fun, shape_layout),
                   static_argnames="vectorize")


def probe_plan(opts: Options, dtype: str, yours: list, refs: list) -> tuple:
    """Flat float indices to probe: the worst element of each tensor, then the elements
    furthest outside the table's band (the widened band is a subset). Returns
    (plan of (tensor, flat index, global index), how many elements are outside)."""
    tol = cmp.tolerance(dtype)
    worst, suspects, offset = [], [], 0
    for k, (y, a) in enumerate(zip(yours, refs, strict=True)):
        y, a = as_f64(y), as_f64(a)
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
        if len(plan) >= len(worst) + opts.max_probes:
            break
        if g not in seen:
            plan.append((k, i, g))
            seen.add(g)
    return plan, len(suspects)


def _second_order_dirs(check, yours, refs, p):
    """Dense directions for second differences: the witness's and the worst elements'."""
    rng = np.random.default_rng([check.seed, 1])
    w = rng.standard_normal(p)
    w /= np.linalg.norm(w)
    dirs, elements, vn = [], {}, None
    if check.kind is HESSIAN:
        dirs.append(w)
        y, a = as_f64(yours[0]), as_f64(refs[0])
        i, j = np.unravel_index(int(np.argmax(np.abs(y - a))), y.shape) if y.size else (0, 0)
        e_i, e_j = np.zeros(p), np.zeros(p)
        e_i[i], e_j[j] = 1.0, 1.0
        dirs += [e_i + e_j, e_i - e_j]  # polarisation: e_iᵀHe_j = (S(e_i+e_j) - S(e_i-e_j))/4
        elements[0] = ((int(i), int(j)), 1, 2)
        return np.stack(dirs), (w, None), elements, None
    v = np.concatenate([as_f64(c).ravel() for c in jax.tree_util.tree_leaves(check.lin)])
    vn = float(np.linalg.norm(v))
    vhat = v / vn if vn > 0 else v
    dirs += [w + vhat, w - vhat]  # wᵀHv = |v| (S(w+v̂) - S(w-v̂))/4
    offset = 0
    for k, (y, a) in enumerate(zip(yours, refs, strict=True)):
        y, a = as_f64(y), as_f64(a)
        if y.size:
            i = int(np.argmax(np.abs(y - a)))
            e = np.zeros(p)
            e[offset + i] = 1.0
            elements[k] = (np.unravel_index(i, y.shape), len(dirs), len(dirs) + 1)
            dirs += [e + vhat, e - vhat]
        offset += y.size
    return np.stack(dirs), (w, vn), elements, vn


def fd_run(check: Check, yours: tuple, refs: tuple) -> Probes:
    """The float64 finite differences: witness direction(s) and element probes."""
    fun = retyped(check.fun, check.layout, "float64")  # traced in the primals' own scope
    with jax.enable_x64(True):
        floats64, ints, lin64 = float64_inputs(check)
        x64_flat = np.concatenate([as_f64(a).ravel() for a in floats64])
        p = x64_flat.size
        if check.kind.order == 1:
            plan, _ = probe_plan(check.opts, check.dtype, yours, refs)
            rows = len(check.layout.floats) + check.opts.max_probes + 1
            rows = max(rows, len(plan) + 1)
            h = fdiff.step(np.float64, 1)
            vflat = np.concatenate([as_f64(v).ravel() for v in
                                    fdiff.random_direction(check.seed + 1, floats64)])
            dense = fdiff.exact_step(x64_flat, h * vflat)  # x + c·dense is exact
            sizes = np.cumsum([math.prod(lf.shape) for lf in check.layout.floats])[:-1]
            vdir = [d.reshape(lf.shape) for d, lf in zip(np.split(dense / h, sizes),
                                                          check.layout.floats, strict=True)]
            # row 0: the witness direction; rows 1..: one element each (padding repeats x)
            coef, idx, steps = np.zeros(rows), np.zeros(rows, np.int64), np.zeros(rows)
            coef[0] = 1.0
            for r, (_, _, g) in enumerate(plan, start=1):
                idx[r] = g
                steps[r] = fdiff.exact_step(x64_flat[g], fdiff.probe_step(np.float64)
                                            * max(1.0, abs(float(x64_flat[g]))))
            probes = Probes(h_dir=h, plan=plan, vdir=vdir, hs=steps[1:])
        else:
            dense, witness, elements, vn = _second_order_dirs(check, yours, refs, p)
            h = fdiff.step(np.float64, 2)
            dense = np.stack([fdiff.exact_step(x64_flat, h * d) / h for d in dense])
            coef = np.full(len(dense), h)
            idx, steps = np.zeros(len(dense), np.int64), np.zeros(len(dense))
            if check.kind is HESSIAN:  # the witness direction actually taken
                witness = (dense[0], None)
            probes = Probes(h_dir=h, witness=witness, elements=elements, vnorm=vn)
        program = _fd_program(check.kind, fun, check.layout.shapes_only())
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
    probes.phi_abs = float(phi_abs)
    if check.kind.order == 1:
        probes.dir, probes.probe = values[0], values[1:]
    else:
        probes.dir = values
    return probes


def probe_estimate(probes: Probes, j: int) -> Any:
    """The Richardson estimate of probe row j (first order)."""
    return fdiff.richardson(probes.probe[j], probes.hs[j], order=1, scale=probes.phi_abs)


def polarized(probes: Probes, plus: int, minus: int) -> tuple:
    """(S(a+b) - S(a-b)) / 4 from second-difference rows plus and minus, and its error."""
    h = probes.h_dir
    ep = fdiff.richardson(probes.dir[plus], h, order=2, scale=probes.phi_abs)
    em = fdiff.richardson(probes.dir[minus], h, order=2, scale=probes.phi_abs)
    return float(ep.central - em.central) / 4.0, float(ep.central_error + em.central_error) / 4.0
