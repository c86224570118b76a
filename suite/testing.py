"""pytest helpers: the checker as assertions that fail with its readable report.

Example (in a test file)::

    from suite.testing import assert_vjp

    def test_my_layer_backward():
        assert_vjp(my_layer, my_layer_vjp, x, params)

Each ``assert_*`` runs the matching ``suite.check_*`` with the same arguments and
raises ``AssertionError(str(result))`` unless the result is PASS (a KINK fails too,
unless ``allow_kink=True``); it returns the CheckResult.
"""

from typing import Any, Callable

from suite.check import (
    CheckResult,
    check_custom_vjp,
    check_grad,
    check_hessian,
    check_hvp,
    check_vjp,
)
from suite.results import Status

__all__ = ["assert_vjp", "assert_custom_vjp", "assert_grad", "assert_hessian", "assert_hvp"]


def _assert(result: CheckResult, allow_kink: bool) -> CheckResult:
    __tracebackhide__ = True  # pytest shows the caller's line, then the report
    if result.status is Status.PASS or (allow_kink and result.status is Status.KINK):
        return result
    raise AssertionError(str(result))


def assert_vjp(fun: Callable, vjp: Callable, *primals: Any, allow_kink: bool = False,
               **kwargs: Any) -> CheckResult:
    """``check_vjp(fun, vjp, *primals, **kwargs)``, raising unless it passes."""
    __tracebackhide__ = True
    return _assert(check_vjp(fun, vjp, *primals, **kwargs), allow_kink)


def assert_custom_vjp(fun: Callable, *primals: Any, allow_kink: bool = False,
                      **kwargs: Any) -> CheckResult:
    """``check_custom_vjp(fun, *primals, **kwargs)``, raising unless it passes."""
    __tracebackhide__ = True
    return _assert(check_custom_vjp(fun, *primals, **kwargs), allow_kink)


def assert_grad(fun: Callable, grad: Callable, *primals: Any, allow_kink: bool = False,
                **kwargs: Any) -> CheckResult:
    """``check_grad(fun, grad, *primals, **kwargs)``, raising unless it passes."""
    __tracebackhide__ = True
    return _assert(check_grad(fun, grad, *primals, **kwargs), allow_kink)


def assert_hessian(fun: Callable, hessian: Callable, x: Any, **kwargs: Any) -> CheckResult:
    """``check_hessian(fun, hessian, x, **kwargs)``, raising unless it passes."""
    __tracebackhide__ = True
    return _assert(check_hessian(fun, hessian, x, **kwargs), False)


def assert_hvp(fun: Callable, hvp: Callable, x: Any, v: Any, **kwargs: Any) -> CheckResult:
    """``check_hvp(fun, hvp, x, v, **kwargs)``, raising unless it passes."""
    __tracebackhide__ = True
    return _assert(check_hvp(fun, hvp, x, v, **kwargs), False)
