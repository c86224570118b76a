"""Checkpointed BPTT at T = 1000 (a bench extra): memory and time of each strategy.

The measurement of suite.studies.bptt_memory, printed as a table per cell: full manual
BPTT, ``checkpoint=k`` for k = 10, ⌈√T⌉ and 100, jax.vjp of the forward and jax.vjp with
jax.checkpoint on the scanned step, at T = 1000, N = 32, D = H = 256, float32. Memory is
XLA's compiled temporary memory (compile only); time is the median of interleaved rounds.
"""

import jax

from suite.studies.bptt_memory import SIZES, measure

__all__ = ["rnn_extra", "lstm_extra"]


def _extra(cell, *, device, echo, budget_s=20.0):
    echo(f"{cell} backward at T={SIZES['t']}, N={SIZES['n']}, D={SIZES['d']}, H={SIZES['h']}, "
         "float32 (ratios to full manual BPTT):")
    echo(f"  {'strategy':<26} {'temp MiB':>9} {'/ full':>7} {'time ms':>9} {'/ full':>7}  "
         "normwise vs jax.vjp")
    with jax.default_device(device):
        rows = measure(cell, SIZES, budget_s=budget_s)
    for r in rows:
        memory = "-" if r["temp_mib"] is None else f"{r['temp_mib']:9.2f}"
        ratio = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:7.3f}"
        echo(f"  {r['strategy']:<26} {memory:>9} {ratio:>7} {r['time_ms']:9.1f} "
             f"{r['time_ratio']:7.2f}  {r['normwise']:.1e}")


def rnn_extra(*, device, echo=print):
    """The vanilla RNN's table."""
    _extra("rnn", device=device, echo=echo)


def lstm_extra(*, device, echo=print):
    """The LSTM's table."""
    _extra("lstm", device=device, echo=echo)
