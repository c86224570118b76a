"""Check your own backward pass with the suite's machinery, in one call.

Example::

    >>> import jax.numpy as jnp
    >>> import suite; suite.configure()
    >>> from suite.check import check_backward
    >>> forward = lambda x, w: jnp.tanh(x @ w)
    >>> def backward(x, w, dy):
    ...     dz = dy * (1 - jnp.tanh(x @ w) ** 2)
    ...     return dz @ w.T, x.T @ dz
    >>> row = check_backward(forward, backward, dict(x=jnp.ones((4, 3)), w=jnp.eye(3)))
    >>> row["status"]
    'PASS'

The inputs are taken as given (their dtype decides the tolerance); the cotangent is a
seeded standard-normal draw unless you pass one. The result is the same row a report
prints — errors, worst index, finite-difference witness — and ``raise_on_fail=True``
turns a FAIL into an AssertionError carrying that message.
"""

import jax
import jax.numpy as jnp
import numpy as np

from suite.cases.common import vjp_case
from suite.run import run_case


def check_backward(forward, backward, primals, dy=None, *, seed=0, raise_on_fail=False):
    """Compare ``backward(*primals, dy)`` with ``jax.vjp(forward, *primals)``.

    Args:
      forward: f(*primals) -> array.
      backward: (*primals, dy) -> cotangents of the primals, in order (a tuple, or one
        array for a single primal).
      primals: dict name -> floating array, in the argument order of ``forward``.
      dy: cotangent of the output; by default standard normal from ``seed``.
      seed: seed of the default cotangent and of the witness direction.
      raise_on_fail: raise AssertionError unless the row passes.

    Returns:
      The row as a dict (see suite.results.COLUMNS).
    """
    if not isinstance(primals, dict) or not primals:
        raise ValueError("primals must be a non-empty dict of name -> array, got "
                         f"{type(primals).__name__}")
    dtypes = {jnp.result_type(x) for x in primals.values()}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise ValueError(f"primals must share one floating dtype, got {sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes))
    if dy is None:
        shape = jax.eval_shape(forward, *primals.values())
        dy = jax.random.normal(jax.random.PRNGKey(seed), shape.shape, dtype)
    if "dy" in primals:
        raise ValueError("a primal may not be called 'dy' (the cotangent's name)")
    inputs = dict(primals, dy=jnp.asarray(dy, dtype))
    case = vjp_case(name="user/backward", family="user", build=lambda key, dt: inputs,
                    forward=forward, backward=backward, primals=tuple(primals), seed=seed)
    result = run_case(case, np.dtype(dtype).name, timing=False)
    row = result.as_dict()
    if row["status"] == "ERROR":
        row["message"] += "\n" + result.traceback
    if raise_on_fail and row["status"] != "PASS":
        raise AssertionError(f"{row['status']}: {row['message']}")
    return row
