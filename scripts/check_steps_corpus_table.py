"""check_steps on its planted corpus, counted: the table of issue 19.

Every planted bug of suite/tests/steps_corpus.py (float64, seed 0): is the first wrong
step and its line the planted one, and is the diagnosis right (in-class bugs: it names
the class; out-of-class bugs: none is claimed)? Then every correct layer in float64 and
float32 over seeds 0, 1, 2: no step may FAIL and no diagnosis may appear. Run from the
repository root:

    PYTHONPATH=. python scripts/check_steps_corpus_table.py
"""

import tempfile
import time

import jax
import numpy as np

from suite.tests import steps_corpus as corpus


def main():
    directory = tempfile.mkdtemp(prefix="steps_corpus_")
    start = time.perf_counter()
    rows = []
    for bug in corpus.BUGS:
        r = corpus.run_bug(bug, directory=directory)
        rows.append(r)
        print(f"{r['bug']:<18} {r['class']:<10} first {r['first']} (planted {r['want']}) "
              f"step+line {'right' if r['step_ok'] else 'WRONG'}, diagnosis "
              f"{'right' if r['diag_ok'] else 'WRONG'}: {r['diagnosis']}", flush=True)
    in_class = [r for r in rows if r["class"] != "—"]
    out_class = [r for r in rows if r["class"] == "—"]
    steps_ok = sum(r["step_ok"] for r in rows)
    print(f"\nplanted bugs: {len(rows)}; first wrong step and line right: {steps_ok} "
          f"({100 * steps_ok / len(rows):.0f} %); diagnosis right: "
          f"{sum(r['diag_ok'] for r in in_class)} of {len(in_class)} in-class; none claimed: "
          f"{sum(r['diag_ok'] for r in out_class)} of {len(out_class)} out-of-class")
    runs = fails = diagnoses = 0
    for model in corpus.MODELS:
        for dtype in (np.float64, np.float32):
            for seed in (0, 1, 2):
                r = corpus.run_correct(model, dtype, seed, directory)
                runs += 1
                fails += bool(r["failed"]) or r["status"] != "PASS"
                diagnoses += bool(r["diagnoses"])
    print(f"correct layers: {runs} checks (6 layers x 2 dtypes x 3 seeds): {fails} with a "
          f"FAIL, {diagnoses} with a diagnosis; {time.perf_counter() - start:.0f} s "
          f"(jax {jax.__version__})")


if __name__ == "__main__":
    main()
