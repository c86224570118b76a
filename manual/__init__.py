"""Hand-derived backpropagation, one derivation per module.

Only ``jax.numpy``, ``jax.lax``, ``jax.random`` and ``numpy`` are used here; no
differentiating transform is ever called (``suite/tests/test_hand_derived.py`` walks
the AST to make sure). Import the derivations by module: ``from manual import rnn``.
"""

__all__: list[str] = []
