"""Embedding cases: the scatter-add backward against jax.vjp of table[ids].

The ids are integers and are not differentiated: each case is a vjp_case with
``arguments=("table", "ids")`` and ``primals=("table",)``, so the oracle is jax.vjp of
``manual.embedding.forward`` in the table alone and the finite-difference witness
perturbs only the table. Every case draws its ids from fewer values than the vocabulary
holds and many more times than there are rows: repeated ids must accumulate, and the
rows no id reads must get exactly zero.
"""

import jax.numpy as jnp
import numpy as np

from manual import embedding
from suite.cases import Family, register, register_family
from suite.cases.common import numpy_rng, vjp_case

__all__ = ["builder", "embedding_case", "CASES"]

register_family(Family(
    name="embedding",
    title="Embedding lookup",
    description="y = table[ids] for integer ids of any shape; dtable[v] = Σ_{i: ids_i = v} dy_i, "
                "a scatter-add: repeated ids accumulate, absent ids get zero rows, the ids "
                "get no gradient (Karpathy's backprop ninja, dC). Against jax.vjp of "
                "manual.embedding.forward in the table only, with the finite-difference "
                "witness perturbing only the table.",
))


def builder(vocab, width, ids_shape, used):
    """table (V, D) and dy standard normal; ids uniform over the first ``used`` < V rows."""
    def build(key, dtype):
        rng = numpy_rng(key)
        ids = rng.integers(0, used, size=ids_shape).astype(np.int32)
        return dict(table=jnp.asarray(rng.standard_normal((vocab, width)).astype(dtype)),
                    ids=jnp.asarray(ids),
                    dy=jnp.asarray(rng.standard_normal(ids_shape + (width,)).astype(dtype)))
    return build


def embedding_case(name, vocab, width, ids_shape, *, used=None, tier="test", **kwargs):
    used = vocab if used is None else used
    return vjp_case(name=name, family="embedding",
                    build=builder(vocab, width, tuple(ids_shape), used),
                    forward=embedding.forward, backward=embedding.backward,
                    arguments=("table", "ids"), primals=("table",),
                    sizes=dict(V=vocab, D=width, ids="x".join(map(str, ids_shape)) or "()",
                               used=used), tier=tier, **kwargs)


# (label, V, D, ids shape, ids drawn from [0, used), tier)
CASES = (
    ("repeated-absent", 10, 3, (4, 6), 7, "test"),   # 24 reads of 7 rows; rows 7-9 absent
    ("D1-ids-rank3", 5, 1, (2, 3, 4), 4, "slow"),
    ("one-id", 6, 4, (), 6, "slow"),                  # a scalar id: one row, the rest zero
    ("same-id", 4, 3, (9,), 1, "slow"),               # every read is row 0
    ("no-ids", 4, 3, (0,), 4, "slow"),                # nothing read: dtable = 0
    ("V1000-D64", 1000, 64, (32, 50), 800, "report"),
)

for label, vocab, width, ids_shape, used, tier in CASES:
    register(embedding_case(f"embedding/{label}", vocab, width, ids_shape, used=used, tier=tier))

# Benchmark: a 50k-word vocabulary of width 512 read by a (64, 128) batch of tokens.
register(embedding_case("embedding/bench-V50000-D512-ids64x128", 50000, 512, (64, 128),
                        tier="bench"))
