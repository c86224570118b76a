"""Checkpointed BPTT (``checkpoint=k`` / "sqrt" on rnn, lstm and gru ``backward``).

The contract (rnn, lstm and gru): only the state entering every k-th step is kept, each
segment is recomputed in the reverse sweep, and the result equals full BPTT to rounding, with and
without truncation and randomized truncation (xi). Checked here:

- every k from 1 to T, and k > T, against full BPTT (float64 normwise <= 1e-13, the
  issue's bound: the same steps run on the same states, only the weight-gradient sums
  are taken segment by segment, so the two differ by a few units of roundoff), and full
  BPTT itself against the autodiff oracle of the registry (jax.vjp of the reference
  forward, with stop_gradient at the cuts) in the same compiled program;
- planted segment mistakes that this comparison fails;
- "sqrt" means k = ⌈√T⌉ (the memory it saves: test_bptt_compiled.py);
- bad ``checkpoint`` values are a ValueError naming the argument.

The registry has checkpointed cases too (CHECKPOINT_CASES in suite/cases/sequences.py),
judged against the same oracles as full and truncated BPTT.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import gru, lstm, rnn
from reference import autodiff
from suite import compare as cmp
from suite.cases import gru as gru_cases
from suite.cases import lstm as lstm_cases
from suite.cases import rnn as rnn_cases

# (truncation, xi as a kept/cut pattern, or None): full, truncated, randomized, both
STRATEGIES = {"full": (None, None), "k3": (3, None), "xi": (None, (1, 0, 1, 1, 0, 1, 1)),
              "k2-xi": (2, (0, 1, 1, 0, 1, 1, 1))}
BOUND = 1e-13
# XLA's LLVM optimization level 0: the same HLO (fusion, buffer assignment) compiled in
# about half the time; these programs are tiny, their speed is irrelevant here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
CELLS = {
    "rnn": dict(module=rnn, cases=rnn_cases, sizes=(3, 4, 5), primals=("params", "xs", "h0"),
                reference=rnn_cases.reference_forward),
    "lstm": dict(module=lstm, cases=lstm_cases, sizes=(2, 3, 4),
                 primals=("params", "xs", "h0", "c0"),
                 reference=lstm_cases.reference_hidden_states),
    "gru": dict(module=gru, cases=gru_cases, sizes=(3, 4, 5), primals=("params", "xs", "h0"),
                reference=gru_cases.reference_forward),
}
# Every k is a program of its own (k is static), so the sweep's cost is its number of
# compiled backward passes. Small: T = 5 (rnn; k = 2, 3, 4 leave a short last segment)
# and T = 4 (lstm, gru; k = 2 divides it, 3 does not), full BPTT and truncation with xi
# together. pytest -m slow: T = 7 (rnn, gru: a prime, every 1 < k < 7 leaves a short
# last segment, k = 2 and 3 after several full ones) and T = 6 (lstm: k = 2, 3 divide it,
# 4 and 5 do not), and every strategy.
# make test runs four of these programs (the test-time budget): the RNN without and with
# truncation and xi, the LSTM and the GRU with them; the rest is "slow".
FAST = {("rnn", 5, "full"), ("rnn", 5, "k2-xi"), ("lstm", 4, "k2-xi"), ("gru", 4, "k2-xi")}
SWEEPS = [pytest.param(cell, steps, strategy, id=f"{cell}-T{steps}-{strategy}",
                       marks=[] if (cell, steps, strategy) in FAST else [pytest.mark.slow])
          for cell, small, large in (("rnn", 5, 7), ("lstm", 4, 6), ("gru", 4, 7))
          for steps, strategies in ((small, ("full", "k2-xi")), (large, STRATEGIES))
          for strategy in strategies]


def _flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def _distance(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _inputs(cell, steps, dtype="float64"):
    spec = CELLS[cell]
    inputs = spec["cases"].builder(steps, *spec["sizes"])(jax.random.PRNGKey(3), dtype)
    return tuple(inputs[k] for k in spec["primals"]), inputs["dhs"]


@functools.lru_cache(maxsize=None)
def _sweep(cell, steps, strategy):
    """Every k in 1..T+1, full BPTT and the autodiff oracle, in one compiled program.

    With the "full" strategy the program also holds truncation=2, which is what
    checkpoint=2 would give if it dropped the adjoint between segments (a planted bug).
    """
    spec = CELLS[cell]
    args, dhs = _inputs(cell, steps)
    truncation, pattern = STRATEGIES[strategy]
    xi = None if pattern is None else jnp.asarray(pattern[:steps], jnp.float64) / 0.7
    ks = list(range(1, steps + 2))

    def run(args, dhs, xi):
        def backward(checkpoint, truncation=truncation):
            return spec["module"].backward(*args, dhs, truncation=truncation, xi=xi,
                                           checkpoint=checkpoint)
        def forward(*p):
            return spec["reference"](*p, truncation=truncation, xi=xi)
        dropped = _flat(backward(None, truncation=2)) if strategy == "full" else None
        return (dict(zip(ks, [backward(k) for k in ks], strict=True)), backward(None),
                autodiff.vjp(forward, args, dhs), dropped)

    return jax.jit(run).lower(args, dhs, xi).compile(FAST_COMPILE)(args, dhs, xi)


@pytest.mark.parametrize("cell, steps, strategy", SWEEPS)
def test_every_checkpoint_equals_full_bptt(cell, steps, strategy):
    checkpointed, full, oracle, _ = _sweep(cell, steps, strategy)
    # full BPTT is itself right (the registry checks the same; here it anchors the sweep)
    result = cmp.compare(tuple(full), tuple(oracle), "float64")
    assert result.passed, result.message
    reference = _flat(full)
    distances = {k: _distance(_flat(g), reference) for k, g in checkpointed.items()}
    assert max(distances.values()) <= BOUND, distances


@pytest.mark.parametrize("cell, steps", [("rnn", 5),
                                         pytest.param("lstm", 4, marks=pytest.mark.slow),
                                         pytest.param("gru", 4, marks=pytest.mark.slow)])
def test_planted_segment_mistakes_fail(cell, steps):
    """Two ways to get the segments wrong, each far outside the bound.

    Dropping the adjoint that a segment hands to the one before it (starting every
    segment's reverse sweep from zero) is exactly ``truncation=k``; forgetting to write
    an earlier segment's dxs leaves zeros there.
    """
    checkpointed, full, _, dropped = _sweep(cell, steps, "full")
    reference, k = _flat(full), 2
    assert _distance(dropped, reference) > 1e3 * BOUND
    saved = checkpointed[k]
    tail = steps - k * ((steps - 1) // k)
    unwritten = (saved[0], saved[1].at[:steps - tail].set(0.0), *saved[2:])
    assert _distance(_flat(unwritten), reference) > 1e3 * BOUND
    assert _distance(_flat(saved), reference) <= BOUND  # the same statistic, no bug


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 10, 17])
def test_sqrt_is_the_ceiling_of_the_square_root(steps):
    # the same static k gives the same program: compare the traced computations
    args, dhs = _inputs("rnn", steps)
    args = (*args, dhs)

    def jaxpr(checkpoint):
        return str(jax.make_jaxpr(lambda *a: rnn.backward(*a, checkpoint=checkpoint))(*args))

    k = math.ceil(math.sqrt(steps))
    assert jaxpr("sqrt") == jaxpr(k)
    if k > 1:
        assert jaxpr("sqrt") != jaxpr(k - 1)


@pytest.mark.parametrize("checkpoint", [0, -3, 2.5, True, "log", "SQRT", [4], np.float64(2.0)])
@pytest.mark.parametrize("cell", list(CELLS))
def test_bad_checkpoint_is_a_value_error_naming_it(cell, checkpoint):
    spec = CELLS[cell]
    args, dhs = _inputs(cell, 3)
    args = (*args, dhs)
    pattern = r'checkpoint must be None, a positive int or "sqrt", got '
    with pytest.raises(ValueError, match=pattern):
        spec["module"].backward(*args, checkpoint=checkpoint)
    if isinstance(checkpoint, list):
        return  # unhashable: jit refuses it as a static argument before tracing
    with pytest.raises(ValueError, match=pattern):  # at trace time under jit, too
        jax.jit(spec["module"].backward, static_argnames="checkpoint")(*args, checkpoint=checkpoint)


@pytest.mark.parametrize("cell", list(CELLS))
def test_checkpointed_dtype_is_preserved(cell):
    spec = CELLS[cell]
    t = 5
    args, dhs = _inputs(cell, t, "float32")
    args = (*args, dhs)
    xi = jax.ShapeDtypeStruct((t,), jnp.float32)
    out = jax.eval_shape(lambda xi, *a: spec["module"].backward(*a, truncation=2, xi=xi,
                                                                checkpoint=3), xi, *args)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(out))
