"""The run phase: cases and studies in, typed results out.

``run_case`` runs one case in one dtype on one device — jit both sides, compare, time —
and returns one ``Row``; ``run_study`` runs one study and returns its ``StudyResult``;
``run_all`` does both for a selection and returns ``Results``, with the environment
they were measured in. Nothing here raises for a broken case or study: an exception
anywhere becomes an ERROR row (or study) carrying its message, so a report always
completes.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.flatten_util import ravel_pytree

from reference import finite_diff
from suite import cases as registry
from suite import compare as cmp
from suite.cases import Case
from suite.config import apply_settings, compile_cache_counts, process_settings
from suite.results import Results, Row, Status, StudyResult
from suite.studies import Study
from suite.timing import block, compile_timed, time_interleaved
from suite.version import __version__

__all__ = ["PLATFORMS", "resolve_device", "build_inputs", "run_case", "time_case", "run_study",
           "run_all", "environment", "git_commit"]

PLATFORMS = ("cpu", "gpu", "tpu")
# A row's timing rounds stop after about this many seconds: a ratio of two programs that
# take seconds is steady from two rounds, and one whose reference takes a minute (the
# ResNet's jax.hessian) is timed once after the warm-up rather than seven times.
ROW_TIMING_CAP_S = 5.0


def resolve_device(name: str | None = None) -> jax.Device:
    """The first JAX device of platform ``name`` ("cpu", "gpu", "tpu"; None: the default).

    Raises ValueError when the platform is unknown or has no device here: a run asked
    for a GPU never falls back to the CPU silently.
    """
    if name is None:
        return jax.devices()[0]
    if name not in PLATFORMS:
        raise ValueError(f"device must be one of {PLATFORMS}, got {name!r}")
    try:
        return jax.devices(name)[0]
    except RuntimeError as err:
        available = sorted({d.platform for d in jax.devices()})
        raise ValueError(f"no {name!r} device available (this machine has: "
                         f"{', '.join(available)}): {str(err).splitlines()[0]}") from None


def _require_devices(count: int, device: jax.Device) -> None:
    have = len(jax.devices(device.platform))
    if have < count:
        raise ValueError(f"this case needs {count} {device.platform} devices, this process has "
                         f"{have} (backprop-suite report --devices {count})")


def _first_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:500]


def _coordinate(seed: int, diagonal: np.ndarray) -> int:
    """A seeded random coordinate among those whose |d_i| is at least 0.1 max |d|: an
    entry of the curvature's own scale, so a wrong one cannot hide below the FD noise."""
    large = np.flatnonzero(np.abs(diagonal) >= 0.1 * np.abs(diagonal).max())
    return int(np.random.default_rng(seed).choice(large))


def _fd_witness(case: Case, inputs: dict, manual_out: Any) -> tuple[float, bool]:
    """Finite-difference error of the manual derivative along one random direction (a
    Hessian's diagonal: along one coordinate, e_iᵀ H e_i)."""
    wrt = tuple(inputs[k] for k in case.wrt)

    def objective(point):
        return case.objective({**inputs, **dict(zip(case.wrt, point, strict=True))})

    if case.order == 2 and case.hessian_form == "diagonal":
        diagonal = np.asarray(ravel_pytree(manual_out)[0], np.float64)
        index = _coordinate(case.seed + 1, diagonal)
        flat, unravel = ravel_pytree(wrt)
        direction = unravel(jnp.zeros_like(flat).at[index].set(1))
        fd = finite_diff.directional_derivative(objective, wrt, direction, order=2)
        return cmp.witness_coordinate(fd, diagonal, index)
    direction = finite_diff.random_direction(case.seed + 1, wrt)
    fd = finite_diff.directional_derivative(objective, wrt, direction, order=case.order)
    return cmp.witness(fd, manual_out, direction, case.order)


def build_inputs(case: Case, dtype: str) -> dict:
    """The case's inputs for ``dtype``; every floating leaf must carry exactly that dtype."""
    inputs = case.build(jax.random.PRNGKey(case.seed), dtype)
    for path, leaf in jax.tree_util.tree_flatten_with_path(inputs)[0]:
        leaf_dtype = jnp.result_type(leaf)
        if jnp.issubdtype(leaf_dtype, jnp.floating) and leaf_dtype != jnp.dtype(dtype):
            raise TypeError(f"{case.name}: input {jax.tree_util.keystr(path)} is {leaf_dtype}, "
                            f"the case was asked for {dtype}")
    return inputs


def _widen(inputs: Any) -> Any:
    """float32 inputs widened to float64 (exactly), integers untouched."""
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, inputs)


def _truth_errors(case: Case, inputs: dict, manual_out: Any,
                  reference_out: Any) -> tuple[float, float]:
    """Normwise errors of a float32 row's two sides against the float64 reference.

    The float32 verdict compares manual with reference, both in float32; these two
    numbers show how far each is from the float64 truth on the very same (widened)
    inputs, so a reader can see that the manual code is as accurate as autodiff.
    """
    truth = jax.jit(case.reference)(_widen(inputs))

    def worst(out):
        return max(r.normwise for r in cmp.compare(out, truth, "float64").leaves)

    return worst(manual_out), worst(reference_out)


def run_case(case: Case, dtype: str, *, device: jax.Device | None = None, timing: bool = True,
             fd: bool = True, truth: bool | None = None, budget_s: float = 0.5) -> Row:
    """Run ``case`` in ``dtype`` on ``device`` and return its ``Row``.

    Args:
      case: a registry Case.
      dtype: "float32" or "float64".
      device: a jax Device (default: the default device).
      timing: measure compile and run times (off in pytest, which only judges).
      fd: run the finite-difference witness (float64 rows of cases with an objective).
      truth: for float32 rows, also measure both sides against the float64 reference
        (default: when timing, i.e. in reports).
      budget_s: time budget for the run-time medians of each side.
    """
    truth = timing if truth is None else truth
    device = device or jax.devices()[0]
    row, sides = _judge(case, dtype, device, apart=timing, fd=fd, truth=truth)
    if timing and sides is not None:
        _time(row, *sides, budget_s=budget_s)
    return row


def _new_row(case: Case, dtype: str, device: jax.Device) -> Row:
    return Row(case=case.name, family=case.family, dtype=dtype, device=device.platform,
               sizes=case.size_label)


def _inputs(case: Case, dtype: str, device: jax.Device) -> tuple[dict, dict]:
    """(inputs on ``device``, inputs for the manual side).

    A case on a mesh (devices > 1) gets uncommitted inputs, which its mesh places (jit
    refuses inputs committed to one device), and is compiled apart from its single-device
    reference: in one program, XLA would partition the reference too.
    """
    inputs = jax.device_put(build_inputs(case, dtype), device)
    if case.devices > 1:
        _require_devices(case.devices, device)
        return inputs, build_inputs(case, dtype)
    return inputs, inputs


def _judge(case: Case, dtype: str, device: jax.Device, *, apart: bool, fd: bool,
           truth: bool) -> tuple[Row, tuple | None]:
    """The row judged — errors, witness, truth — and (manual, reference, inputs,
    manual inputs) for timing, or None when the row is an ERROR.

    ``apart``: compile the two sides as two programs, timing each compile (after
    ``jax.clear_caches``, so nothing is reused from an earlier row); otherwise one program
    computes both (one compile instead of two, for judging only).
    """
    row = _new_row(case, dtype, device)
    try:
        row.tol_normwise = cmp.tolerance(dtype).normwise
        if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
            raise RuntimeError("float64 needs jax_enable_x64 (suite.configure())")
        inputs, mesh_inputs = _inputs(case, dtype, device)
        manual = reference = None
        if apart:  # honest compile times: nothing cached from an earlier row
            jax.clear_caches()
            manual, row.compile_manual_s = compile_timed(case.manual, mesh_inputs)
            reference, row.compile_reference_s = compile_timed(case.reference, inputs)
            manual_out, reference_out = block(manual(mesh_inputs)), block(reference(inputs))
        elif case.devices > 1:
            manual_out = block(jax.jit(case.manual)(mesh_inputs))
            reference_out = block(jax.jit(case.reference)(inputs))
        else:  # judging only: both sides in one program, one compile instead of two
            both = jax.jit(lambda i: (case.manual(i), case.reference(i)))
            manual_out, reference_out = block(both(inputs))
        result = cmp.compare(manual_out, reference_out, dtype)
        worst = result.worst
        row.leaf, row.normwise, row.max_abs = worst.path, worst.normwise, worst.max_abs
        row.max_rel, row.frac_outside = worst.max_rel, worst.frac_outside
        row.worst_index = str(worst.worst_index)
        row.worst_manual, row.worst_reference = worst.worst_actual, worst.worst_expected
        messages = [result.message] if not result.passed else []
        if fd and case.objective is not None and jnp.dtype(dtype) == jnp.float64:
            row.fd_error, fd_ok = _fd_witness(case, inputs, manual_out)
            if not fd_ok:
                messages.append(f"finite-difference witness disagrees: error {row.fd_error:.3e} "
                                f"(tol {cmp.FD_TOLERANCE[case.order]:.0e})")
        if truth and jnp.dtype(dtype) == jnp.float32 and jax.config.jax_enable_x64:
            row.truth_manual, row.truth_reference = _truth_errors(
                case, inputs, manual_out, reference_out)
        row.status = Status.FAIL if messages else Status.PASS
        row.message = "; ".join(messages)
    except Exception as err:  # a broken case is a row, never a crashed report
        _error(row, err)
        return row, None
    return row, (manual, reference, inputs, mesh_inputs)


def _error(row: Row, err: BaseException) -> None:
    row.status, row.message = Status.ERROR, _first_line(err)
    row.traceback = traceback.format_exc()


def _time(row: Row, manual: Callable, reference: Callable, inputs: dict, mesh_inputs: dict, *,
          budget_s: float) -> None:
    """The row's run-time medians, manual and reference in interleaved rounds."""
    try:
        (m, r), _ = time_interleaved([lambda: manual(mesh_inputs), lambda: reference(inputs)],
                                     budget_s=budget_s, max_s=ROW_TIMING_CAP_S)
        row.run_manual_s, row.run_reference_s, row.ratio = m, r, m / r
    except Exception as err:  # a broken case is a row, never a crashed report
        _error(row, err)


def time_case(case: Case, row: Row, *, device: jax.Device | None = None,
              budget_s: float = 0.5) -> Row:
    """Time a row judged elsewhere (a worker process): compile both sides here again — a
    load when the persistent compilation cache holds them — and measure their run-time
    medians as ``run_case`` does. The row's errors and compile times are kept; an ERROR
    row is returned as it is."""
    if row.status is Status.ERROR:
        return row
    device = device or jax.devices()[0]
    try:
        inputs, mesh_inputs = _inputs(case, row.dtype, device)
        jax.clear_caches()
        manual = jax.jit(case.manual).lower(mesh_inputs).compile()
        reference = jax.jit(case.reference).lower(inputs).compile()
    except Exception as err:
        _error(row, err)
        return row
    _time(row, manual, reference, inputs, mesh_inputs, budget_s=budget_s)
    return row


def run_study(study: Study, *, quick: bool = False,
              device: jax.Device | None = None) -> StudyResult:
    """Run ``study``: PASS if all its checks hold, FAIL if one does not, ERROR if it raised."""
    result = StudyResult(name=study.name, family=study.family, title=study.title,
                         status=Status.ERROR, render=study.render)
    start = time.perf_counter()
    try:
        outcome = study.run(quick=quick, device=device)
        failed = [c for c in outcome.checks if not c.passed]
        result.outcome = outcome
        result.status = Status.FAIL if failed else Status.PASS
        result.message = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    except Exception as err:  # a broken study is a result, never a crashed report
        result.message, result.traceback = _first_line(err), traceback.format_exc()
    result.seconds = time.perf_counter() - start
    return result


def run_all(selected: Iterable[Case], dtypes: Sequence[str], *,
            studies: Iterable[Study] = (), device: jax.Device | None = None,
            timing: bool = True, quick: bool = False,
            progress: Callable[[Row | StudyResult], None] | None = None,
            workers: int = 1, on_timed: Callable[[Row], None] | None = None,
            **kwargs: Any) -> Results:
    """Run every (case, dtype) and every study on ``device``; return ``Results``.

    Everything runs under ``jax.default_device(device)``, studies included, so a GPU
    report computes on the GPU throughout. ``progress`` is called with each row once it
    is judged and with each study once it has run.

    ``workers`` > 1 runs in two phases. Phase 1, judging: ``workers`` spawned processes
    (with this process's JAX settings, ``suite.config.process_settings``) take the
    (case, dtype) pairs one at a time, as pytest-xdist shares tests, and each builds,
    compiles (timing the compiles), compares and runs the witnesses exactly as
    ``run_case`` does. Phase 2, timing, after every worker has exited: this process
    compiles each row's two sides again (a load from the persistent compilation cache,
    when it is on) and measures the run times in interleaved rounds, with no worker
    running; ``on_timed`` is called with each row timed. The studies run last, here,
    alone. The rows are those of a serial run, in the same order, times aside. A case
    that is not the registry's own (a planted or user-made one, which a worker could not
    look up by name) is judged here, after the workers.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    device = device or jax.devices()[0]
    pairs = [(case, dtype) for case in selected for dtype in dtypes if dtype in case.dtypes]
    results: list[StudyResult] = []
    worker_counts = (0, 0)
    with jax.default_device(device):
        if workers == 1:
            rows = []
            for case, dtype in pairs:
                rows.append(run_case(case, dtype, device=device, timing=timing, **kwargs))
                if progress:
                    progress(rows[-1])
        else:
            rows, worker_counts = _run_two_phases(pairs, device, workers, timing=timing,
                                                  progress=progress, on_timed=on_timed, **kwargs)
        for study in studies:
            result = run_study(study, quick=quick, device=device)
            results.append(result)
            if progress:
                progress(result)
    env = environment(device)
    hits, requests = (a + b for a, b in zip(compile_cache_counts(), worker_counts, strict=True))
    cache = jax.config.jax_compilation_cache_dir
    home = os.path.expanduser("~")
    if cache and home not in ("", "~", "/") and cache.startswith(home + os.sep):
        cache = "~" + cache[len(home):]  # the report names no user's home
    env["compile cache"] = (f"{cache}: {hits} of {requests} compiles loaded from it" if cache
                            else "off")
    env["workers"] = ("1: every row judged and timed in this process" if workers == 1 else
                      f"{workers}: rows judged (and compiles timed) in {workers} worker "
                      f"processes{', run times measured after them, alone' if timing else ''}")
    return Results(rows=rows, studies=results, environment=env)


def _run_two_phases(pairs: list[tuple[Case, str]], device: jax.Device, workers: int, *,
                    timing: bool, progress: Callable | None, on_timed: Callable | None,
                    fd: bool = True, truth: bool | None = None,
                    budget_s: float = 0.5) -> tuple[list[Row], tuple[int, int]]:
    """Rows judged by ``workers`` processes, then timed here; and the workers' (hits,
    requests) of the persistent compilation cache."""
    truth = timing if truth is None else truth
    rows: list[Row | None] = [None] * len(pairs)
    shared = [i for i, (case, _) in enumerate(pairs) if _registered(case)]
    here = sorted(set(range(len(pairs))) - set(shared))
    counts: dict[int, tuple[int, int]] = {}  # per worker process: its latest totals
    if shared:
        devices = len(jax.devices("cpu")) if device.platform == "cpu" else 0
        context = multiprocessing.get_context("spawn")  # a fresh JAX per worker, never a fork
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=min(workers, len(shared)), mp_context=context,
                initializer=_worker_start, initargs=(process_settings(), devices)) as pool:
            jobs = [pool.submit(_worker_judge, pairs[i][0].name, pairs[i][1], device.platform,
                                timing, fd, truth) for i in shared]
            for i, job in zip(shared, jobs, strict=True):
                try:
                    rows[i], pid, counts[pid] = job.result()
                except Exception as err:  # a worker that died (an XLA abort): an ERROR row
                    rows[i] = _new_row(pairs[i][0], pairs[i][1], device)
                    _error(rows[i], err)
                    rows[i].message = f"in a worker process: {rows[i].message}"
                if progress:
                    progress(rows[i])
    for i in here:
        case, dtype = pairs[i]
        rows[i] = _judge(case, dtype, device, apart=timing, fd=fd, truth=truth)[0]
        if progress:
            progress(rows[i])
    if timing:
        for (case, _), row in zip(pairs, rows, strict=True):
            time_case(case, row, device=device, budget_s=budget_s)
            if on_timed:
                on_timed(row)
    hits, requests = (sum(c[k] for c in counts.values()) for k in (0, 1))
    return rows, (hits, requests)


def _registered(case: Case) -> bool:
    """Whether a worker process finds this very case in its registry by name."""
    try:
        return registry.get(case.name) is case
    except ValueError:
        return False


def _worker_start(settings: dict[str, Any], cpu_devices: int) -> None:
    """A worker process's set-up: its parent's JAX settings, and as many host devices."""
    if cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    apply_settings(settings)


def _worker_judge(name: str, dtype: str, platform: str, apart: bool, fd: bool,
                  truth: bool) -> tuple[Row, int, tuple[int, int]]:
    """One (case, dtype) judged in a worker process, as ``run_case`` judges it; with the
    worker's id and its compile-cache totals so far."""
    device = resolve_device(platform)
    with jax.default_device(device):
        row = _judge(registry.get(name), dtype, device, apart=apart, fd=fd, truth=truth)[0]
    return row, os.getpid(), compile_cache_counts()


def git_commit() -> str:
    """The source tree's commit (short hash), marked when it has uncommitted changes.

    A copy of the tree made elsewhere (a remote accelerator, a tarball) carries no .git
    of its own, or a stale one: the environment variable BACKPROP_SUITE_COMMIT, when set,
    names the commit the copy was made from and takes precedence.
    """
    given = os.environ.get("BACKPROP_SUITE_COMMIT", "").strip()
    if given:
        return f"{given} (named by BACKPROP_SUITE_COMMIT)"
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, cwd=here).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def environment(device: jax.Device | None = None) -> dict[str, Any]:
    """The facts a reader needs to reproduce the numbers.

    The short fields head the report; ``jax_environment`` is JAX's own account
    (``jax.print_environment_info``: versions, platform, devices, nvidia-smi on a GPU).
    """
    device = device or jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git commit": git_commit(),
        "backprop-suite": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": device.platform,
        "device": f"{device.device_kind} ({device})",
        "devices": len(jax.devices(device.platform)),
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax_environment": jax.print_environment_info(return_string=True),
    }
