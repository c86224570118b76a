"""What check_steps costs against one check_vjp of the same function (issue 19: <= 3x).

The staged batch norm of examples/staged_batchnorm.py (float64, nine marked steps): each
round checks fresh closures of its forward and backward (nothing compiled is reused
between rounds), first with check_vjp, then with check_steps; CPU time of the process (all
its threads) and wall time; the median ratio of three rounds. Run from the repository root:

    PYTHONPATH=. python scripts/check_steps_cost.py
"""

import importlib.util
import statistics
import time

from suite import check_steps, check_vjp
from suite.check import recording


def main():
    spec = importlib.util.spec_from_file_location("staged", "examples/staged_batchnorm.py")
    staged = importlib.util.module_from_spec(spec)
    with recording():  # the example's own checks are not counted
        spec.loader.exec_module(staged)
    args = (staged.x, staged.w, staged.gamma, staged.beta)
    ratios = []
    for r in range(3):
        def f(*a):
            return staged.forward(*a)

        def b(*a):
            return staged.backward(*a)
        c0, w0 = time.process_time(), time.perf_counter()
        assert check_vjp(f, b, *args).passed
        c1, w1 = time.process_time(), time.perf_counter()

        def f2(*a):
            return staged.forward(*a)

        def b2(*a):
            return staged.backward(*a)
        assert check_steps(f2, b2, *args).passed
        c2, w2 = time.process_time(), time.perf_counter()
        ratios.append((c2 - c1) / (c1 - c0))
        print(f"round {r}: check_vjp {c1 - c0:.2f} s CPU ({w1 - w0:.2f} s wall), check_steps "
              f"{c2 - c1:.2f} s CPU ({w2 - w1:.2f} s wall): {ratios[-1]:.2f}x")
    print(f"median: check_steps costs {statistics.median(ratios):.2f}x one check_vjp")


if __name__ == "__main__":
    main()
