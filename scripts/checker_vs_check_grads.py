"""Side by side: jax.test_util.check_grads and suite.check_custom_vjp on planted bugs.

check_grads tests JAX's derivative of a function, so a hand-written backward pass is
handed to it the usual way, as a jax.custom_vjp; check_custom_vjp gets the same object.
For each planted bug of the test corpus (suite/tests/checker_corpus.py) and each dtype,
prints whether each tool caught it and the first lines of its message; then the same for
the corpus's correct but ill-conditioned layers, where a FAIL is a false alarm.

    python scripts/checker_vs_check_grads.py [--seeds 3]
"""

import argparse
import time

import jax
import numpy as np
from jax.test_util import check_grads

from suite import check_custom_vjp
from suite.tests import checker_corpus as corpus

BUGS = ("eps_dropped", "wrong_reduction_axis", "off_by_one_time_loop", "missing_chain_factor")


def as_custom_vjp(fun, vjp):
    def bwd(primals, g):
        out = vjp(*primals, g)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
    wrapped = jax.custom_vjp(fun)
    wrapped.defvjp(lambda *p: (fun(*p), p), bwd)
    return wrapped


def run_check_grads(f, primals):
    try:
        start = time.perf_counter()
        check_grads(f, primals, order=1, modes=("rev",))
        return "passed", "", time.perf_counter() - start
    except AssertionError as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        return "caught", " | ".join(lines[:4])[:400], time.perf_counter() - start
    except Exception as err:  # a crash is an outcome too
        return "raised", f"{type(err).__name__}: {err}"[:400], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)  # check_grads' float64 mode needs it
    entries = {e.name: e for e in corpus.BUGGY + corpus.ILL}
    print("Planted bugs (each should be caught):")
    compare(entries, BUGS, args.seeds)
    print("\nCorrect but ill-conditioned layers (each should pass):")
    compare(entries, [e.name for e in corpus.ILL], args.seeds)


def compare(entries, names, seeds):
    for name in names:
        entry = entries[name]
        f = as_custom_vjp(entry.fun, entry.vjp)
        for dtype in ("float32", "float64"):
            cg, ours = [], []
            for seed in range(seeds):
                primals = corpus.primals(entry, seed, dtype)
                cg.append(run_check_grads(f, primals))
                result = check_custom_vjp(f, *primals, seed=seed, batched=False)
                ours.append((result.status.value, result.summary(), result.seconds))
            print(f"== {name} ({dtype}), {seeds} seeds")
            print(f"   check_grads:      {[c[0] for c in cg]}")
            caught = [c for c in cg if c[0] != "passed"]
            if caught:
                print(f"     message: {caught[0][1]}")
            print(f"   check_custom_vjp: {[o[0] for o in ours]}")
            if ours[0][1]:
                print(f"     message: {ours[0][1][:300]}")
            print(f"   seconds per call (after the first): check_grads "
                  f"{np.median([c[2] for c in cg[1:]] or [cg[0][2]]):.3f}, check_custom_vjp "
                  f"{np.median([o[2] for o in ours[1:]] or [ours[0][2]]):.3f}")


if __name__ == "__main__":
    main()
