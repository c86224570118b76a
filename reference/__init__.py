"""The oracles: JAX's own autodiff, and float64 finite differences as a third witness.

Never imports ``manual``: the reference must not share a line with the code it judges.
Import the oracles by module: ``from reference import autodiff``.
"""

__all__: list[str] = []
