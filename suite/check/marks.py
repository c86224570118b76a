"""``mark`` and ``adjoint``: name the intermediates of a forward and their adjoints in a backward.

In the forward, ``mark(name, value)`` says "judge the adjoint of this value"; in the
backward, ``adjoint(name, value)`` says "this is my d(objective)/d(name)". Both are the
identity (they return ``value``) unless a ``check_steps`` is running: the check opens a
``Session`` (``session(...)``, a context over a ContextVar: nothing module-level is
mutated, no JAX setting changes) in one of its modes:

- ``discover``: marks record their name, shape, dtype and source line; adjoints record
  theirs and return the value;
- ``zeros``: each mark returns ``value + z[name]`` for a zero ``z[name]``; autodiff with
  respect to those zeros gives the true adjoint of every marked value;
- ``record``: adjoints record (name, value, line) and return the value;
- ``substitute``: adjoints record as well, but return the true adjoint (see
  ``suite.check.steps`` for why): the calls of one name return values that sum to it.

Example::

    >>> import numpy as np
    >>> mark("h", np.ones(2))            # outside a check: the identity
    array([1., 1.])
    >>> with session("record") as s:
    ...     _ = adjoint("h", np.ones(2))
    >>> [(c.name, c.line.rsplit(":", 1)[0].endswith(".py") or "<" in c.line) for c in s.calls]
    [('h', True)]
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import os
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["mark", "adjoint", "session", "Session", "MarkInfo", "Call", "MODES", "StepsError"]

MODES = ("discover", "zeros", "record", "substitute")

# the Session of the check_steps now running (None outside one), per thread and task
_SESSION: contextvars.ContextVar = contextvars.ContextVar("suite_check_steps", default=None)


class StepsError(ValueError):
    """A misuse of mark/adjoint that check_steps reports as a ValueError."""


@dataclasses.dataclass
class MarkInfo:
    """One marked intermediate: where it was marked, its shape and dtype, how often."""

    name: str
    shape: tuple
    dtype: str
    line: str
    count: int = 1


@dataclasses.dataclass
class Call:
    """One ``adjoint`` call: the step's name, the value given, its source line."""

    name: str
    value: Any
    line: str


@dataclasses.dataclass
class Session:
    """The recording of one pass of a check_steps (see the module docstring for the modes)."""

    mode: str
    zeros: dict = dataclasses.field(default_factory=dict)
    truths: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)   # calls expected per name
    marks: dict = dataclasses.field(default_factory=dict)    # name -> MarkInfo
    calls: list = dataclasses.field(default_factory=list)    # Call, in order
    returned: dict = dataclasses.field(default_factory=dict)  # name -> sum returned so far

    def on_mark(self, name: str, value: Any, line: str) -> Any:
        if self.mode == "discover":
            dtype = jnp.result_type(value)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise StepsError(f"mark({name!r}): the value must be floating, got {dtype} "
                                 f"(at {line})")
            if name in self.marks:
                self.marks[name].count += 1
            else:
                self.marks[name] = MarkInfo(name, tuple(np.shape(value)), np.dtype(dtype).name,
                                            line)
            return value
        if self.mode == "zeros" and name in self.zeros:
            return value + self.zeros[name].astype(jnp.result_type(value))
        return value

    def on_adjoint(self, name: str, value: Any, line: str) -> Any:
        if self.mode == "zeros":
            return value
        self.calls.append(Call(name, value, line))
        if self.mode != "substitute" or name not in self.truths:
            return value
        seen = sum(c.name == name for c in self.calls)
        dtype = jnp.result_type(value)
        if seen < self.counts.get(name, 1):  # a partial contribution: the user's own value
            self.returned[name] = self.returned.get(name, 0.0) + value
            return value
        # the last contribution completes the sum: the calls of one name return the truth
        truth = jnp.asarray(self.truths[name]).astype(dtype)
        rest = truth - self.returned.get(name, 0.0)
        if np.shape(rest) != np.shape(value) and np.size(rest) == np.size(value):
            rest = rest.reshape(np.shape(value))
        return rest


def _caller_line() -> str:
    """'path/file.py:NN' of the code that called mark/adjoint (relative to the working
    directory when it lies inside it; notebooks give their kernel's file names)."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    if caller is None:
        return "<unknown>:0"
    filename = caller.f_code.co_filename
    try:
        rel = os.path.relpath(filename)
        if not rel.startswith(os.pardir) and not os.path.isabs(rel):
            filename = rel
    except ValueError:  # another drive (Windows)
        pass
    return f"{filename}:{caller.f_lineno}"


def _require_name(function: str, name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{function}: name must be a non-empty str, got {name!r}")


def mark(name: str, value: Any) -> Any:
    """In the forward: mark ``value`` as the intermediate ``name``; returns ``value``.

    The identity outside a ``check_steps``; inside one, the check judges the adjoint that
    the backward gives for ``name`` (``adjoint(name, ...)``) against the true one.

    Args:
      name: the step's name (one mark per name; a value used twice is marked once).
      value: a floating array (not inside ``lax.scan`` or a loop body).

    Returns:
      ``value`` (inside a check, ``value`` plus a zero the check differentiates by).
    """
    _require_name("mark", name)
    s = _SESSION.get()
    return value if s is None else s.on_mark(name, value, _caller_line())


def adjoint(name: str, value: Any) -> Any:
    """In the backward: ``value`` is my d(objective)/d(name); returns the value to go on with.

    The identity outside a ``check_steps``. Inside one the check may return the true
    adjoint instead, to tell an error made at this step from one inherited from an
    earlier step: the backward must go on with the value this returns. Several calls with
    one name are summed (a value used twice gets two contributions).

    Args:
      name: the name given to ``mark`` in the forward.
      value: the adjoint (or one contribution to it), shaped like the marked value.

    Returns:
      ``value`` (or, inside a check, the true adjoint's share of it).
    """
    _require_name("adjoint", name)
    s = _SESSION.get()
    return value if s is None else s.on_adjoint(name, value, _caller_line())


@contextlib.contextmanager
def session(mode: str, **fields: Any) -> Iterator[Session]:
    """Open a Session in ``mode`` for the block (nested sessions: the innermost is active)."""
    if mode not in MODES:
        raise ValueError(f"session: mode must be one of {MODES}, got {mode!r}")
    s = Session(mode=mode, **fields)
    token = _SESSION.set(s)
    try:
        yield s
    finally:
        _SESSION.reset(token)
