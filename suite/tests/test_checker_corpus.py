"""The checker on a corpus of user layers: no false FAIL, every planted bug caught.

CORRECT and ILL (correct but deliberately ill-conditioned) layers must never FAIL (nor
ERROR); every BUGGY layer must FAIL on every seed with the broken tensor named. ``make
test`` runs two seeds of each in float32 and float64; the slow test runs 20 seeds with
every extra check on. The layers are user code (suite/tests/checker_corpus.py).
"""

import pytest

from suite import check_vjp
from suite.tests import checker_corpus as corpus

DTYPES = ("float32", "float64")


def _params(entries, seeds, marks=()):
    return [pytest.param(e, dtype, seeds, id=f"{e.name}-{dtype}", marks=list(marks))
            for e in entries for dtype in DTYPES]


def _check(entry, dtype, seed, **options):
    return check_vjp(entry.fun, entry.vjp, *corpus.primals(entry, seed, dtype), seed=seed,
                     name=entry.name, **options)


def _correct_passes(entry, dtype, seeds, **options):
    for seed in seeds:
        result = _check(entry, dtype, seed, **options)
        assert result.status == "PASS", f"seed {seed}:\n{result}"


def _bug_fails_with_its_tensor_named(entry, dtype, seeds, **options):
    for seed in seeds:
        result = _check(entry, dtype, seed, **options)
        failed = [t.name for t in result.tensors if t.status == "FAIL"]
        assert result.status == "FAIL" and entry.wrong in failed, f"seed {seed}:\n{result}"
        assert f"FAIL  {entry.wrong}  " in str(result)


QUICK = (0, 1)
SLOW = tuple(range(20))


@pytest.mark.parametrize("entry, dtype, seeds", _params(corpus.CORRECT + corpus.ILL, QUICK))
def test_correct_layers_pass(entry, dtype, seeds):
    _correct_passes(entry, dtype, seeds, batched=False)


@pytest.mark.parametrize("entry, dtype, seeds", _params(corpus.BUGGY, QUICK))
def test_planted_bugs_fail_naming_the_tensor(entry, dtype, seeds):
    _bug_fails_with_its_tensor_named(entry, dtype, seeds, batched=False)


@pytest.mark.slow
@pytest.mark.parametrize("entry, dtype, seeds", _params(corpus.CORRECT + corpus.ILL, SLOW))
def test_correct_layers_pass_on_20_seeds(entry, dtype, seeds):
    _correct_passes(entry, dtype, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("entry, dtype, seeds", _params(corpus.BUGGY, SLOW))
def test_planted_bugs_fail_on_20_seeds(entry, dtype, seeds):
    _bug_fails_with_its_tensor_named(entry, dtype, seeds)
