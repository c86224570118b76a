"""Exercise: an embedding lookup and its scatter-add (repeated ids accumulate)."""

import jax
import jax.numpy as jnp

from suite.learn.catalog import Exercise, Planted, Step, register

__all__ = ["EXERCISE"]

M = "manual/embedding.py"


def inputs():
    """table (5, 3), w (3, 2), float64 (the ids are the notebook's IDS)."""
    kt, kw = jax.random.split(jax.random.PRNGKey(12))
    return (jax.random.normal(kt, (5, 3), jnp.float64), jax.random.normal(kw, (3, 2), jnp.float64))


EXERCISE = register(Exercise(
    name="embedding", family="embedding", arguments=("table", "w"),
    source="Karpathy, makemore part 4 (dC, the embedding's gradient)", inputs=inputs,
    steps=(
        Step("demb", "emb", "dy @ w.T", "manual/linear.py", ("dX = dY Wᵀ",), "dx = dy @ w.T",
             "dE/demb, the rows read"),
        Step("dw", "w", "emb.T @ dy", "manual/linear.py", ("dW = Xᵀ dY",), "dw = x.T @ dy",
             "dE/dw"),
        Step("dtable", "table", "jnp.zeros_like(table).at[IDS].add(demb)", M,
             ("dtable[v] = Σ_{i : ids[i] = v} dy[i]",),
             "return jnp.zeros((vocab, width), table.dtype).at[flat_ids].add(rows",
             "dE/dtable, a scatter-add"),
    ),
    # an overwrite where the reads must accumulate: repeated ids keep one contribution
    planted=Planted("dtable", "jnp.zeros_like(table).at[IDS].set(demb)", None),
))
