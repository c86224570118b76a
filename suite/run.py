"""Run one case on one device in one dtype: jit both sides, compare, time -> one row.

A row is a flat dict (see ``COLUMNS``); ``run_all`` turns the registry into a pandas
DataFrame. Nothing here raises for a broken case: an exception anywhere becomes an
ERROR row carrying its message, so a report always completes.
"""

import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import pandas as pd

from reference import finite_diff
from suite import compare as cmp

COLUMNS = (
    "case", "family", "dtype", "device", "sizes", "status", "leaf", "normwise",
    "max_abs", "max_rel", "frac_outside", "worst_index", "worst_manual",
    "worst_reference", "tol_normwise", "fd_error", "truth_manual", "truth_autodiff", "compile_manual_s",
    "compile_autodiff_s", "run_manual_s", "run_autodiff_s", "ratio", "message",
)


def resolve_device(name=None):
    """The first JAX device of platform ``name`` ("cpu", "gpu", "tpu"; None: default)."""
    if name is None:
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError as err:
        raise ValueError(f"no {name!r} device available: {err}") from None


def block(tree):
    return jax.block_until_ready(tree)


def compile_timed(fn, inputs):
    """jit-compile ``fn`` for ``inputs``; returns (compiled, seconds spent compiling)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(inputs).compile()
    return compiled, time.perf_counter() - start


def time_interleaved(fns, inputs, *, repeats=None, budget_s=0.5, min_repeats=5,
                     max_repeats=200):
    """Median wall time of each compiled function, measured in interleaved rounds.

    Round r runs every function once, in an order rotated by r, so that slow drifts of
    the machine (another process, frequency scaling) fall on all of them alike. Each
    call is timed to ``block_until_ready``. With ``repeats=None`` the number of rounds
    fills about ``budget_s`` seconds, within [min_repeats, max_repeats].

    Returns:
      (medians, samples): a list of median seconds, and the per-function samples.
    """
    for fn in fns:  # warm-up: first calls may allocate or transfer
        block(fn(inputs))
    if repeats is None:
        start = time.perf_counter()
        for fn in fns:
            block(fn(inputs))
        per_round = max(time.perf_counter() - start, 1e-6)
        repeats = int(min(max_repeats, max(min_repeats, budget_s / per_round)))
    samples = [[] for _ in fns]
    for r in range(repeats):
        for i in range(len(fns)):
            j = (i + r) % len(fns)
            start = time.perf_counter()
            block(fns[j](inputs))
            samples[j].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples], samples


def _first_line(err):
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:500]


def _fd_witness(case, inputs, manual_out):
    """Finite-difference error of the manual derivative along one random direction."""
    wrt = tuple(inputs[k] for k in case.wrt)
    direction = finite_diff.random_direction(case.seed + 1, wrt)

    def objective(point):
        return case.objective({**inputs, **dict(zip(case.wrt, point))})

    fd = finite_diff.directional_derivative(objective, wrt, direction, order=case.order)
    return cmp.witness(fd, manual_out, direction, case.order)


def build_inputs(case, dtype):
    """The case's inputs for ``dtype``; every floating leaf must carry exactly that dtype."""
    inputs = case.build(jax.random.PRNGKey(case.seed), dtype)
    for path, leaf in jax.tree_util.tree_flatten_with_path(inputs)[0]:
        leaf_dtype = jnp.result_type(leaf)
        if jnp.issubdtype(leaf_dtype, jnp.floating) and leaf_dtype != jnp.dtype(dtype):
            raise TypeError(f"{case.name}: input {jax.tree_util.keystr(path)} is {leaf_dtype}, "
                            f"the case was asked for {dtype}")
    return inputs


def _upcast(inputs):
    """float32 inputs widened to float64 (exactly), integers untouched."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, inputs)


def _truth_errors(case, inputs, manual_out, reference_out):
    """Normwise errors of a float32 row's two sides against the float64 oracle.

    The float32 verdict compares manual with autodiff, both in float32; these two
    numbers show how far each is from the float64 truth on the very same (widened)
    inputs, so a reader can see that the manual code is as accurate as autodiff.
    """
    truth = jax.jit(case.reference)(_upcast(inputs))
    worst = lambda out: max(r.normwise for r in cmp.compare(out, truth, "float64").leaves)
    return worst(manual_out), worst(reference_out)


def run_case(case, dtype, *, device=None, timing=True, fd=True, truth=None, budget_s=0.5):
    """Run ``case`` in ``dtype`` on ``device`` and return one row (a dict of COLUMNS).

    Args:
      case: a registry Case.
      dtype: "float32" or "float64".
      device: a jax Device (default: the default device).
      timing: measure compile and run times (off in pytest, which only judges).
      fd: run the finite-difference witness (float64 rows of cases with an objective).
      truth: for float32 rows, also measure both sides against the float64 oracle
        (default: when timing, i.e. in reports).
      budget_s: time budget for the run-time medians of each side.
    """
    truth = timing if truth is None else truth
    device = device or jax.devices()[0]
    row = dict.fromkeys(COLUMNS)
    row.update(case=case.name, family=case.family, dtype=dtype, device=device.platform,
               sizes=case.size_label, tol_normwise=cmp.tolerance(dtype).normwise)
    try:
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise RuntimeError("float64 needs jax_enable_x64 (suite.configure())")
        inputs = jax.device_put(build_inputs(case, dtype), device)
        if timing:  # honest compile times: nothing cached from an earlier row (see _truth_errors)
            jax.clear_caches()
            manual, t_manual = compile_timed(case.manual, inputs)
            autodiff, t_autodiff = compile_timed(case.reference, inputs)
            manual_out, reference_out = block(manual(inputs)), block(autodiff(inputs))
        else:  # judging only: both sides in one program, one compile instead of two
            both = jax.jit(lambda i: (case.manual(i), case.reference(i)))
            manual_out, reference_out = block(both(inputs))
        result = cmp.compare(manual_out, reference_out, dtype)
        worst = result.worst
        row.update(leaf=worst.path, normwise=worst.normwise, max_abs=worst.max_abs,
                   max_rel=worst.max_rel, frac_outside=worst.frac_outside,
                   worst_index=str(worst.worst_index), worst_manual=worst.worst_actual,
                   worst_reference=worst.worst_expected)
        messages = [result.message] if not result.passed else []
        if fd and case.objective is not None and jnp.dtype(dtype) == jnp.float64:
            fd_error, fd_ok = _fd_witness(case, inputs, manual_out)
            row["fd_error"] = fd_error
            if not fd_ok:
                messages.append(f"finite-difference witness disagrees: error {fd_error:.3e} "
                                f"(tol {cmp.FD_TOLERANCE[case.order]:.0e})")
        if truth and jnp.dtype(dtype) == jnp.float32 and jax.config.jax_enable_x64:
            row["truth_manual"], row["truth_autodiff"] = _truth_errors(
                case, inputs, manual_out, reference_out)
        if timing:
            row.update(compile_manual_s=t_manual, compile_autodiff_s=t_autodiff)
            (m, a), _ = time_interleaved([manual, autodiff], inputs, budget_s=budget_s)
            row.update(run_manual_s=m, run_autodiff_s=a, ratio=m / a)
        row["status"] = "FAIL" if messages else "PASS"
        row["message"] = "; ".join(messages)
    except Exception as err:  # a broken case is a row, never a crashed report
        row.update(status="ERROR", message=_first_line(err))
        row["traceback"] = traceback.format_exc()
    return row


def run_all(selected, dtypes, *, device=None, timing=True, progress=None, **kwargs):
    """Run every (case, dtype) and return a DataFrame with one row each."""
    rows = []
    for case in selected:
        for dtype in dtypes:
            if dtype not in case.dtypes:
                continue
            row = run_case(case, dtype, device=device, timing=timing, **kwargs)
            row.pop("traceback", None)
            rows.append(row)
            if progress:
                progress(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))
