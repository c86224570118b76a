"""The float32 truth rule's margin: yours' and autodiff's distances from the float64 truth.

For every tensor of every layer of suite/tests/checker_corpus.py in float32 over the
seeds, the ratio r = truth_yours / max(truth_autodiff, u) (u = 2^-24): how much further
from the float64 truth the code under test is than autodiff in the same dtype. Prints
the largest r over the correct (CORRECT, ILL) layers and the smallest over each planted
bug's broken tensor; the checker's TRUTH_RATIO must lie between.

    python scripts/checker_truth_ratio.py [--seeds 10]
"""

import argparse

import numpy as np

from suite import check_vjp
from suite.tests import checker_corpus as corpus

U = 2.0 ** -24


def ratios(entry, seeds, only=None):
    out = []
    for seed in range(seeds):
        r = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, seed, "float32"), seed=seed,
                      batched=False, fd=False)
        for t in r.tensors:
            if t.truth_yours is None or not t.resolved or (only and t.name != only):
                continue
            out.append(t.truth_yours / max(t.truth_autodiff, U))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    print("| group | layer | tensor | min ratio | max ratio |\n|---|---|---|---:|---:|")
    for group in ("CORRECT", "ILL", "BUGGY"):
        for entry in getattr(corpus, group):
            rs = ratios(entry, args.seeds, entry.wrong or None)
            if rs:
                print(f"| {group} | {entry.name} | {entry.wrong or 'all'} | {min(rs):.3g} | "
                      f"{max(rs):.3g} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
