"""The join: case registry, comparison policy, runner, studies, report, bench and CLI.

The pipeline flows one way (docs/design.md): ``suite.cases`` builds inputs, ``suite.run``
runs the hand-derived code and its reference and ``suite.compare`` judges them, giving
typed ``suite.results`` rows and study results that ``suite.report`` writes. Nothing
lower in that chain imports anything higher (suite/tests/test_imports.py enforces it).

The gradient checker for your own derivatives is importable from here and needs no
set-up (it never changes JAX's global settings)::

    from suite import check_vjp, check_custom_vjp, check_grad, check_hessian, check_hvp
"""

from suite.check import (
                         CheckResult,
                         adjoint,
                         check_custom_jvp,
                         check_custom_vjp,
                         check_grad,
                         check_hessian,
                         check_hvp,
                         check_jvp,
                         check_steps,
                         check_vjp,
                         mark,
)
from suite.config import configure
from suite.version import __version__

__all__ = ["__version__", "configure", "check_vjp", "check_custom_vjp", "check_grad",
           "check_hessian", "check_hvp", "CheckResult", "mark", "adjoint", "check_steps",
           "check_jvp", "check_custom_jvp"]
