"""The old name of the checker: ``check_backward`` is a thin alias of ``check_vjp``.

Prefer ``from suite import check_vjp`` (see suite/checker.py). This keeps the earlier
signature, primals as a dict of name -> array, and returns the same CheckResult.

Example::

    >>> import jax.numpy as jnp
    >>> from suite.check import check_backward
    >>> forward = lambda x, w: jnp.tanh(x @ w)
    >>> def backward(x, w, dy):
    ...     dz = dy * (1 - jnp.tanh(x @ w) ** 2)
    ...     return dz @ w.T, x.T @ dz
    >>> check_backward(forward, backward, dict(x=jnp.ones((4, 3)), w=jnp.eye(3))).status
    <Status.PASS: 'PASS'>
"""

from typing import Any, Callable

from suite.check_result import CheckResult
from suite.checker import check_vjp

__all__ = ["check_backward"]


def check_backward(forward: Callable, backward: Callable, primals: dict, dy: Any = None, *,
                   seed: int = 0, raise_on_fail: bool = False, **options: Any) -> CheckResult:
    """``check_vjp(forward, backward, *primals.values(), cotangent=dy, names=primals)``.

    Args:
      forward: f(*primals) -> any pytree.
      backward: (*primals, dy) -> cotangents of the primals, in order.
      primals: dict name -> array (or pytree), in the argument order of ``forward``.
      dy: the cotangent; by default standard normal from ``seed``.
      seed: as for check_vjp.
      raise_on_fail: raise AssertionError(str(result)) unless the result is PASS.
      **options: as for check_vjp.

    Returns:
      The CheckResult.
    """
    if not isinstance(primals, dict) or not primals:
        raise ValueError("check_backward: primals must be a non-empty dict of name -> array, "
                         f"got {type(primals).__name__}")
    result = check_vjp(forward, backward, *primals.values(), cotangent=dy, seed=seed,
                       names=tuple(primals), **options)
    if raise_on_fail:
        result.assert_passed()
    return result
