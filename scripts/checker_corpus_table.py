"""The checker's verdicts on its corpus, counted: the before/after table of issue 18.

For each group of suite/tests/checker_corpus.py (CORRECT and ILL must PASS, BUGGY must
FAIL naming its tensor) and dtype: how many (layer, seed) checks came out right, and
which did not. Run it against another checkout's checker with that checkout first on
PYTHONPATH and this tree's suite/tests after it, e.g. for main:

    PYTHONPATH=/path/to/main python scripts/checker_corpus_table.py --corpus . --seeds 3
    python scripts/checker_corpus_table.py --seeds 3
"""

import argparse
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corpus", default="", help="a tree whose suite/tests to use")
    args = parser.parse_args()
    import suite.tests
    if args.corpus:
        suite.tests.__path__.insert(0, f"{args.corpus}/suite/tests")
    from suite import check_vjp
    from suite.tests import checker_corpus as corpus
    print("| group | dtype | right | wrong (layer/seed: status) | s/check |")
    print("|---|---|---:|---|---:|")
    for group in ("CORRECT", "ILL", "BUGGY"):
        for dtype in ("float32", "float64"):
            right, wrong, seconds = 0, [], []
            for entry in getattr(corpus, group):
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    r = check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, seed, dtype),
                                  seed=seed, batched=False)
                    seconds.append(time.perf_counter() - start)
                    failed = [t.name for t in r.tensors if t.status == "FAIL"]
                    ok = (r.status == "FAIL" and entry.wrong in failed if group == "BUGGY"
                          else r.status == "PASS")
                    right += ok
                    if not ok:
                        wrong.append(f"{entry.name}/{seed}: {r.status}")
            total = right + len(wrong)
            print(f"| {group} | {dtype} | {right}/{total} | {', '.join(wrong) or '—'} | "
                  f"{statistics.median(seconds):.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
