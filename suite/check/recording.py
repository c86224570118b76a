"""Recording: collect every CheckResult the public check_* functions return in a block.

``recording()`` is a context manager (nestable: every active block receives each
result); ``backprop-suite check FILE.py`` uses it to collect the checks a file makes.
``record`` is what each public check_* calls on its result.

Example::

    >>> from suite.check.result import CheckResult
    >>> from suite.results import Status
    >>> with recording() as results:
    ...     _ = record(CheckResult("check_vjp", "f", Status.PASS, "float64"))
    >>> [r.name for r in results]
    ['f']
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Callable

from suite.check.result import CheckResult

__all__ = ["recording", "record", "recorded"]

# the lists of the active recording() blocks, innermost last (per thread and task)
_SINKS: contextvars.ContextVar = contextvars.ContextVar("suite_check_recording", default=())


@contextlib.contextmanager
def recording() -> Iterator[list]:
    """Collect every CheckResult the checker returns inside this block (nestable)."""
    sink: list = []
    token = _SINKS.set(_SINKS.get() + (sink,))
    try:
        yield sink
    finally:
        _SINKS.reset(token)


def record(result: CheckResult) -> CheckResult:
    """Hand ``result`` to every active recording() block; return it."""
    for sink in _SINKS.get():
        sink.append(result)
    return result


def recorded(check: Callable) -> Callable:
    """Decorate a public check_* so that its results are recorded."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        return record(check(*args, **kwargs))
    return wrapper
