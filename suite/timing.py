"""Timing compiled code fairly: compile once, then interleaved rounds and medians.

Used by the runner (a row's run times), the benches and the studies alike, so that
"manual is 0.8x autodiff" means the same measurement everywhere.

Example::

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((64, 64))
    >>> f, _ = compile_timed(lambda a: a @ a, x)
    >>> g, _ = compile_timed(lambda a: a + a, x)
    >>> (t_f, t_g), samples = time_interleaved([f, g], x, repeats=5)
    >>> len(samples[0]), t_f > 0
    (5, True)
    >>> slow = lambda a: (time.sleep(0.05), a)[1]  # one call longer than max_s
    >>> (t_slow,), samples = time_interleaved([slow], x, max_s=0.01)
    >>> len(samples[0]), t_slow >= 0.05
    (1, True)
"""

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["block", "compile_timed", "time_interleaved", "median_time"]


def block(tree: Any) -> Any:
    """Wait until every array of ``tree`` is computed (JAX dispatches asynchronously)."""
    return jax.block_until_ready(tree)


def compile_timed(fn: Callable, *args: Any) -> tuple[Callable, float]:
    """jit-compile ``fn`` for ``args``; returns (compiled, seconds spent compiling)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_interleaved(fns: Sequence[Callable], *args: Any, repeats: int | None = None,
                     budget_s: float = 0.5, min_repeats: int = 5, max_repeats: int = 200,
                     max_s: float | None = None) -> tuple[list[float], list[list[float]]]:
    """Median wall time of each compiled function, measured in interleaved rounds.

    Round r runs every function once, in an order rotated by r, so that slow drifts of
    the machine (another process, frequency scaling) fall on all of them alike. Each
    call is timed to ``block_until_ready``. A first round warms up (first calls may
    allocate or transfer) and, with ``repeats=None``, sizes the rest: as many rounds as
    fill about ``budget_s`` seconds, within [min_repeats, max_repeats].

    ``max_s`` caps the rounds' total for slow programs (the report's rows): at most
    ``max_s / round`` rounds, at least one; and a warm-up round already longer than
    ``max_s`` is its own sample, since first-call effects (milliseconds) are lost in a
    call that long. A row whose autodiff side takes a minute costs one minute, not seven.

    Returns:
      (medians, samples): a list of median seconds, and the per-function samples.
    """
    warm = []
    for fn in fns:
        start = time.perf_counter()
        block(fn(*args))
        warm.append(time.perf_counter() - start)
    per_round = max(sum(warm), 1e-6)
    if max_s is not None and per_round > max_s:
        return list(warm), [[t] for t in warm]
    if repeats is None:
        repeats = int(min(max_repeats, max(min_repeats, budget_s / per_round)))
    if max_s is not None:
        repeats = max(1, min(repeats, int(max_s / per_round)))
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for i in range(len(fns)):
            j = (i + r) % len(fns)
            start = time.perf_counter()
            block(fns[j](*args))
            samples[j].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples], samples


def median_time(fn: Callable, *args: Any, repeats: int = 5) -> float:
    """Median seconds of ``repeats`` calls of one compiled function (after a warm-up)."""
    return time_interleaved([fn], *args, repeats=repeats)[0][0]
