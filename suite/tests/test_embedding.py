"""manual.embedding beyond the registry: the scatter-add against a loop, the planted
overwrite, ids checked eagerly and their documented behaviour under jit, and the
``arguments=`` form of vjp_case (a non-differentiated input the witness leaves alone).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual import embedding
from suite import cases as registry
from suite import compare as cmp
from suite import run
from suite.cases.common import vjp_case

CASE = "embedding/repeated-absent"


def np_backward(table, ids, dy, bug=None):
    """dtable by a loop over the reads (Karpathy's dC); ``overwrite`` keeps the last read."""
    table, ids, dy = np.asarray(table), np.asarray(ids).ravel(), np.asarray(dy)
    dtable = np.zeros_like(table)
    for i, row in zip(ids, dy.reshape(-1, table.shape[1]), strict=True):
        if bug == "overwrite":
            dtable[i] = row
        else:
            dtable[i] += row
    return dtable


@pytest.fixture(scope="module")
def repeated():
    case = registry.get(CASE)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    return inputs, np.asarray(jax.jit(case.reference)(inputs).dtable)


def _judge(out, reference):
    return cmp.compare(out, reference, "float64")


def test_the_case_repeats_ids_and_leaves_rows_absent(repeated):
    inputs, reference = repeated
    counts = np.bincount(np.asarray(inputs["ids"]).ravel(), minlength=10)
    assert counts.max() > 1 and (counts == 0).any()
    assert np.all(reference[counts == 0] == 0.0)  # absent rows: exactly zero


def test_loop_agrees_with_autodiff_and_the_overwrite_fails(repeated):
    inputs, reference = repeated
    args = (inputs["table"], inputs["ids"], inputs["dy"])
    assert _judge(np_backward(*args), reference).passed
    result = _judge(np_backward(*args, bug="overwrite"), reference)
    assert not result.passed, "an overwriting backward was not caught"


def test_forward_is_a_lookup_and_backward_accumulates_exactly():
    table = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.asarray([[3, 0], [3, 3]])
    np.testing.assert_array_equal(embedding.forward(table, ids), np.asarray(table)[np.asarray(ids)])
    dy = jnp.ones((2, 2, 3))
    np.testing.assert_array_equal(embedding.backward(table, ids, dy),
                                  [[1.0] * 3, [0.0] * 3, [0.0] * 3, [3.0] * 3])
    # a scalar id and no ids at all
    np.testing.assert_array_equal(embedding.forward(table, jnp.asarray(2)), table[2])
    assert not np.asarray(embedding.backward(table, jnp.zeros((0,), jnp.int32),
                                             jnp.zeros((0, 3)))).any()


@pytest.mark.parametrize("ids, pattern", [
    (np.array([0, 4]),
     r"ids must lie in \[0, V\) = \[0, 4\) for table \(4, 3\), got values in \[0, 4\]"),
    (np.array([-1, 2]), r"ids must lie in \[0, V\) = \[0, 4\).*got values in \[-1, 2\]"),
    (np.array([0.0, 1.0]), r"ids must be an integer array, got shape \(2,\) and dtype float"),
])
def test_bad_ids_are_value_errors(ids, pattern):
    table = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=pattern):
        embedding.forward(table, jnp.asarray(ids))
    with pytest.raises(ValueError, match=pattern):
        embedding.backward(table, jnp.asarray(ids), jnp.zeros(ids.shape + (3,)))


@pytest.mark.parametrize("args, pattern", [
    ((jnp.zeros((4, 3, 1)), jnp.zeros(2, jnp.int32)), r"table must have rank 2"),
    ((jnp.zeros((4, 3), jnp.int32), jnp.zeros(2, jnp.int32)), r"table must be a floating-point"),
    ((jnp.zeros((4, 3)), jnp.zeros(2, jnp.int32), jnp.zeros((2, 4))),
     r"dy must have the shape of y, ids.shape \+ \(D,\) = \(2, 3\), got \(2, 4\)"),
    ((jnp.zeros((4, 3)), jnp.zeros(2, jnp.int32), jnp.zeros((2, 3), jnp.float32)),
     r"dy must have the dtype of table, float64, got float32"),
])
def test_bad_table_or_dy_is_a_value_error(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        (embedding.backward if len(args) == 3 else embedding.forward)(*args)


def test_under_jit_ids_follow_jax_indexing_exactly_as_autodiff_does():
    # Values are unknown while tracing: a negative id counts from the end, an id outside
    # [-V, V) reads NaN and sends nothing back, in both directions, as jax.vjp does.
    table = jnp.arange(12.0).reshape(4, 3)
    ids = jnp.asarray([0, -1, 7, 3])
    dy = jnp.ones((4, 3))

    def both(table, ids, dy):
        manual = (embedding.forward(table, ids), embedding.backward(table, ids, dy))
        y, pullback = jax.vjp(lambda t: embedding.forward(t, ids), table)
        return manual, (y, pullback(dy)[0])

    (y, dtable), (y_ref, dtable_ref) = jax.jit(both)(table, ids, dy)
    np.testing.assert_array_equal(y[:2], np.asarray(table)[[0, 3]])
    assert np.isnan(np.asarray(y[2])).all()
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dtable, [[1.0] * 3, [0.0] * 3, [0.0] * 3, [2.0] * 3])
    np.testing.assert_array_equal(dtable, dtable_ref)
    # the clamp of plain table[ids] under jit would read row 3 for id 7: not what is done,
    # and the docstrings say so (the behaviour and the documentation agree)
    clamped = jax.jit(lambda t, i: t[i])(table, ids)
    assert not np.isnan(np.asarray(clamped[2])).any()
    for fn in (embedding.forward, embedding.backward):
        assert "[-V, V)" in fn.__doc__ and "ValueError" in fn.__doc__
    assert "NaN" in embedding.forward.__doc__ and "never clamped" in embedding.forward.__doc__


# --- vjp_case with a non-differentiated argument -----------------------------------------

def test_the_oracle_and_the_witness_see_only_the_table():
    # The ids are an argument, not a primal: jax.vjp is taken in the table alone and the
    # witness direction has the table's shape only (test_registry.py's planted shared
    # mistake shows the witness catching a doubled dtable on this very case).
    case = registry.get(CASE)
    assert case.wrt == ("table",)
    inputs = case.build(jax.random.PRNGKey(case.seed), "float64")
    assert case.reference(inputs)._fields == ("dtable",)


def test_arguments_must_contain_the_primals():
    with pytest.raises(ValueError, match=r"primals \('ids',\) must be distinct names among"):
        vjp_case(name="embedding/bad", family="embedding", build=None, forward=None,
                 backward=None, arguments=("table",), primals=("ids",))
    with pytest.raises(ValueError, match="must be distinct names"):
        vjp_case(name="embedding/bad", family="embedding", build=None, forward=None,
                 backward=None, arguments=("table", "table"), primals=("table",))


def test_a_planted_overwrite_through_the_registry_case_fails():
    # the same mistake judged end to end by run_case (float32 and float64)
    case = registry.get(CASE)

    def overwrite(table, ids, dy):
        flat = jnp.reshape(ids, (-1,))
        return jnp.zeros_like(table).at[flat].set(jnp.reshape(dy, (flat.shape[0], -1)))

    planted = dataclasses.replace(case, name=case.name + "+overwrite", manual=lambda inputs: (
        overwrite(inputs["table"], inputs["ids"], inputs["dy"]),))
    for dtype in ("float32", "float64"):
        row = run.run_case(planted, dtype, timing=False, fd=False)
        assert row.status == "FAIL", row
