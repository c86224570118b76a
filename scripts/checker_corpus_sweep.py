"""The checker's corpus over many seeds, on the default device, as a Markdown table.

For each layer of suite/tests/checker_corpus.py (correct, ill-conditioned, planted bugs)
and dtype: the statuses over the seeds, the range of the tolerance widening, how often
the table alone (unwidened) would have failed it, how many checks left a tensor
unresolved, the finite-difference witness's verdicts, and the median seconds per call.
It runs with JAX's settings as they are (no suite.configure()): on a GPU that means the
default float32 matmul precision, which the widening has to absorb.

    python scripts/checker_corpus_sweep.py [--seeds 20] [--group CORRECT,ILL,BUGGY]
"""

import argparse
import collections
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from suite import check_vjp
from suite import compare as cmp
from suite.tests import checker_corpus as corpus


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--group", default="CORRECT,ILL,BUGGY")
    args = parser.parse_args()
    a = np.random.default_rng(0).standard_normal((256, 256))
    matmul = np.abs(np.asarray(jnp.asarray(a, jnp.float32) @ jnp.asarray(a, jnp.float32))
                    - a @ a).max()
    print(f"jax {jax.__version__} on {jax.devices()[0]}; a float32 256x256 matmul is off the "
          f"float64 one by {matmul:.1e} (full float32 ~1e-4, TF32 ~1e-1)\n")
    print("| group | layer | dtype | statuses | widening | table alone FAILs | unresolved | "
          "witness | s/call |")
    print("|---|---|---|---|---|---:|---:|---|---:|")
    for group in args.group.split(","):
        for entry in getattr(corpus, group):
            for dtype in ("float32", "float64"):
                row(group, entry, dtype, args.seeds)


def row(group, entry, dtype, seeds):
    statuses, widening, witness = collections.Counter(), [], collections.Counter()
    table_fails = unresolved = 0
    seconds = []
    for seed in range(seeds):
        start = time.perf_counter()
        r = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, seed, dtype), seed=seed)
        seconds.append(time.perf_counter() - start)
        statuses[r.status.value] += 1
        judged = [t for t in r.tensors if t.resolved]
        widening += [t.widening for t in judged]
        table_fails += any((t.normwise or 0) > cmp.tolerance(dtype).normwise for t in judged)
        unresolved += len(judged) < len(r.tensors)
        witness[r.witness.verdict if r.witness else "none"] += 1
        wrong = group == "BUGGY" and entry.wrong not in [t.name for t in r.tensors
                                                           if t.status == "FAIL"]
        if wrong or (group != "BUGGY" and r.status.value != "PASS"):
            print(r)
    span = f"{min(widening):.3g}–{max(widening):.3g}" if widening else "—"
    print(f"| {group} | {entry.name} | {dtype} | {dict(statuses)} | {span} | {table_fails} | "
          f"{unresolved} | {dict(witness)} | {statistics.median(seconds):.3f} |", flush=True)


if __name__ == "__main__":
    main()
