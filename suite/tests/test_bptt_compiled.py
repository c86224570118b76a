"""What XLA makes of rnn, lstm and gru ``backward``: the compiled program, not its output.

Compile only (no run, no timing):

- every scan body of the hand-derived BPTT holds exactly one matrix product (the
  recurrent one); the shared-weight gradients and the input projection are outside the
  scans. jax.vjp of the same forward accumulates dW_h inside its reverse body (two
  products there), which shows the count can fail.
- no scan body copies a whole (T, ...) array: the LSTM's (T, N, 4H) buffer is read and
  written in place, step by step (a copy there would cost T times its size per call).
- checkpointing shrinks the compiled temporary memory (XLA's buffer assignment).
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from manual import gru, lstm, rnn
from reference import autodiff
from suite.cases import gru as gru_cases
from suite.cases import lstm as lstm_cases
from suite.cases import rnn as rnn_cases

CELLS = {"rnn": (rnn, rnn_cases, ("params", "xs", "h0"), rnn.forward),
         "lstm": (lstm, lstm_cases, ("params", "xs", "h0", "c0"), lstm_cases.hidden_states),
         "gru": (gru, gru_cases, ("params", "xs", "h0"), gru.forward)}
# T large enough that XLA keeps the scans as loops (it may unroll tiny trip counts)
T, N, D, H = 40, 4, 8, 16
# XLA's LLVM optimization level 0: the same HLO (fusion, buffer assignment), compiled faster
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _args(cell, steps=T, n=N, d=D, h=H, dtype="float64"):
    module, cases, primals, _ = CELLS[cell]
    inputs = cases.builder(steps, n, d, h)(jax.random.PRNGKey(0), dtype)
    return (*(inputs[k] for k in primals), inputs["dhs"])


def _compile(fn, args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def _computations(hlo):
    """{name: body text} for every computation of an HLO module's text."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r"^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)}


def _dots(name, comps):
    """Matrix products in computation ``name``, counting those inside fusions it calls."""
    body = comps[name]
    called = re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", body)
    return len(re.findall(r" dot\(", body)) + sum(_dots(c, comps) for c in called if c in comps)


def _loop_bodies(hlo):
    comps = _computations(hlo)
    return comps, re.findall(r" while\(.*?body=%?([\w.\-]+)", hlo)


@pytest.mark.parametrize("cell", list(CELLS))
def test_each_scan_body_holds_exactly_one_matrix_product(cell):
    module = CELLS[cell][0]
    comps, bodies = _loop_bodies(_compile(module.backward, _args(cell)).as_text())
    assert len(bodies) == 2, bodies  # the forward scan and the reverse scan
    assert [_dots(b, comps) for b in bodies] == [1, 1]


# one cell in make test (the test-time budget), the others with pytest -m slow
ONE_FAST = ["rnn"] + [pytest.param(c, marks=pytest.mark.slow) for c in CELLS if c != "rnn"]


@pytest.mark.parametrize("cell", ONE_FAST)
def test_autodiff_reverse_body_has_two_products(cell):
    # the same count on jax.vjp of the forward: dW_h is accumulated inside its reverse body
    _, _, primals, forward = CELLS[cell]
    args = _args(cell)
    hlo = _compile(lambda *a: autodiff.vjp(forward, a[:-1], a[-1]), args).as_text()
    comps, bodies = _loop_bodies(hlo)
    assert max(_dots(b, comps) for b in bodies) == 2


def _sequence_copies(hlo):
    comps, bodies = _loop_bodies(hlo)
    return [c for b in bodies for c in re.findall(rf"= f64\[{T},[\d,]+\][^\n]* copy\(", comps[b])]


@pytest.mark.parametrize("cell", list(CELLS))
def test_no_scan_body_copies_a_whole_sequence(cell):
    module = CELLS[cell][0]
    assert not _sequence_copies(_compile(module.backward, _args(cell)).as_text())


def test_a_scan_body_that_copies_its_buffer_is_caught():
    # planted: the body keeps the buffer both before and after writing slot s, so XLA
    # must copy the whole (T, N, H) buffer every step
    def planted(buf):
        def step(carry, s):
            _, cur = carry
            return (cur, lax.dynamic_update_index_in_dim(cur, 2.0 * cur[s], s, 0)), None
        return lax.scan(step, (buf, buf), jnp.arange(T))[0]
    assert _sequence_copies(_compile(planted, (jnp.ones((T, N, H)),)).as_text())


def _temp_bytes(module, args, checkpoint):
    compiled = _compile(lambda *a: module.backward(*a, checkpoint=checkpoint), args)
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


@pytest.mark.parametrize("cell", ONE_FAST)
def test_checkpointing_shrinks_the_compiled_temporary_memory(cell):
    # T = 256: "sqrt" keeps 16 states and one 16-step segment's residuals where full BPTT
    # keeps 256 steps of them
    module = CELLS[cell][0]
    args = _args(cell, steps=256, dtype="float32")
    full, sqrt = _temp_bytes(module, args, None), _temp_bytes(module, args, "sqrt")
    assert sqrt < 0.25 * full, (sqrt, full)
