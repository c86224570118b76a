"""Check your own derivative: a VJP, a custom_vjp rule, a gradient, a Hessian, an HVP.

``check_vjp``, ``check_custom_vjp``, ``check_grad``, ``check_hessian`` and ``check_hvp``
judge the derivative under test ("yours") against JAX's autodiff of the same function
and float64 finite differences, and return a ``CheckResult`` (see judge.py for the
policy, result.py for the report). They need no set-up and change no global JAX
setting; ``from suite import check_vjp`` works too. ``recording()`` collects every
result returned inside a block.

The package holds one concept per module: api (the entry points), options (the options
and the primals), kinds (vjp, grad, hessian, hvp and their behaviour), recast (the
function's program at another precision, captured constants too), pairs (complex leaves
as real pairs), runs (the compiled runs, typed records), probes (float64 finite
differences), judge (the verdicts, host-side numpy), extra (batched, determinism, zero,
dtype), recording, result.

``check_backward`` is the old name, kept as a thin alias of ``check_vjp`` with the earlier
signature (primals as a dict of name -> array); it returns the same CheckResult.

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

from suite.check.api import check_custom_vjp, check_grad, check_hessian, check_hvp, check_vjp
from suite.check.jvp import check_custom_jvp, check_jvp
from suite.check.marks import adjoint, mark
from suite.check.options import OPTIONS
from suite.check.recording import recording
from suite.check.result import CheckOutcome, CheckResult, Kink, TensorResult, Witness
from suite.check.stepresult import AuditRow, StepResult
from suite.check.steps import check_steps

__all__ = ["check_vjp", "check_custom_vjp", "check_grad", "check_hessian", "check_hvp",
           "check_backward", "CheckResult", "TensorResult", "Kink", "CheckOutcome", "Witness",
           "OPTIONS", "recording", "mark", "adjoint", "check_steps", "StepResult", "AuditRow",
           "check_jvp", "check_custom_jvp"]


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
