"""The case registry: every comparison the suite makes is declared here, once.

A ``Case`` names a derivation, builds its inputs from a key and a dtype, and says how
the hand-derived code (``manual``) and the oracle (``reference``) each compute the
same pytree of derivatives. pytest, ``backprop-suite report`` and ``backprop-suite
bench`` all iterate over this registry; nothing else declares a comparison.

Each family lives in a module of this package (``linear.py``, ``mlp.py``, ...) that
calls ``register_family`` once and ``register`` per case; modules are discovered on
import, so adding a derivation is one function in ``manual/`` and one entry here.

Tiers say where a case runs:
    "test"    every ``make test`` and every report
    "slow"    ``pytest -m slow`` and every report (big sweeps)
    "report"  the report only (large shapes)
    "bench"   ``backprop-suite bench`` only (benchmark shapes)
"""

import dataclasses
import importlib
import pkgutil
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["TIERS", "HESSIAN_FORMS", "DTYPES", "FAMILY_ORDER", "Family", "Case",
           "register_family", "register", "families", "cases", "get"]

TIERS = ("test", "slow", "report", "bench")
HESSIAN_FORMS = ("dense", "diagonal")
DTYPES = ("float32", "float64")
# The order of the report's sections (families not listed here follow, alphabetically).
FAMILY_ORDER = ("linear", "mlp", "conv", "conv_transpose", "pool", "rnn", "lstm", "gru",
                "layernorm", "rmsnorm", "groupnorm", "batchnorm", "attention", "embedding",
                "stagewise", "network")


@dataclasses.dataclass(frozen=True)
class Family:
    """A derivation family: one section of the report.

    Material beyond the family's rows (a training run, a curvature analysis) is a study
    (``suite.studies``) that names the family; benchmark extras live in ``suite.bench``.
    """
    name: str
    title: str
    description: str


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: hand-derived ``manual`` against the oracle ``reference``.

    Attributes:
      name: unique, "family/what" (e.g. "linear/N1").
      family: the Family this case belongs to.
      build: (key, dtype name) -> dict of inputs; every array carries ``dtype``
        (integer labels excepted). Random inputs stay away from kinks and ties.
      manual: inputs -> pytree, the hand-derived computation (jit-compiled).
      reference: inputs -> pytree of the same structure, computed by autodiff.
      objective: optional inputs -> scalar, for the finite-difference witness; with
        ``order=1`` the leaves of ``manual`` are its gradient with respect to
        ``wrt``, leaf for leaf; with ``order=2`` ``manual`` is its (P, P) Hessian over
        ``ravel_pytree(tuple(inputs[k] for k in wrt))`` (``hessian_form="dense"``) or
        that Hessian's diagonal, shaped like the ``wrt`` inputs (``"diagonal"``).
      wrt: names of the inputs the derivatives are taken with respect to.
      order: 1 or 2 (see ``objective``).
      hessian_form: "dense" or "diagonal" (order 2 only): what ``manual`` returns, and
        so the witness: vᵀ H v along a random v, or e_iᵀ H e_i along one coordinate.
      sizes: shape parameters shown in the report.
      dtypes: the dtypes this case runs in.
      tier: one of TIERS.
      seed: PRNG seed; by default a hash of the name, so every failure reproduces.
      devices: how many devices of the run's platform the case needs (its manual side
        builds a mesh of them, see suite/cases/sharded.py). A process with fewer skips
        the case (pytest) or leaves it out of the report with a note (the CLI).
    """
    name: str
    family: str
    build: Callable[[Any, str], dict]
    manual: Callable[[dict], Any]
    reference: Callable[[dict], Any]
    objective: Callable[[dict], Any] | None = None
    wrt: tuple = ()
    order: int = 1
    hessian_form: str = "dense"
    sizes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dtypes: tuple = DTYPES
    tier: str = "test"
    seed: int | None = None
    devices: int = 1

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"case {self.name}: tier must be one of {TIERS}, got {self.tier!r}")
        if self.order not in (1, 2):
            raise ValueError(f"case {self.name}: order must be 1 or 2, got {self.order}")
        if not (isinstance(self.devices, int) and self.devices >= 1):
            raise ValueError(f"case {self.name}: devices must be a positive int, got "
                             f"{self.devices!r}")
        if self.hessian_form not in HESSIAN_FORMS:
            raise ValueError(f"case {self.name}: hessian_form must be one of {HESSIAN_FORMS}, "
                             f"got {self.hessian_form!r}")
        if self.objective is not None and not self.wrt:
            raise ValueError(f"case {self.name}: an objective needs the names in wrt")
        if self.seed is None:
            object.__setattr__(self, "seed", zlib.crc32(self.name.encode()))

    @property
    def size_label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.sizes.items())


_CASES: dict[str, Case] = {}
_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Declare a Family (once per family module)."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def register(case: Case) -> Case:
    """Declare a Case; its family must be registered first and its name be new."""
    if case.family not in _FAMILIES:
        raise ValueError(f"case {case.name}: unknown family {case.family!r}")
    if case.name in _CASES:
        raise ValueError(f"case {case.name!r} is registered twice")
    _CASES[case.name] = case
    return case


def _family_key(name):
    return (FAMILY_ORDER.index(name), "") if name in FAMILY_ORDER else (len(FAMILY_ORDER), name)


def families() -> list[Family]:
    """Registered families in report order."""
    return [_FAMILIES[n] for n in sorted(_FAMILIES, key=_family_key)]


def cases(*, family: str | Iterable[str] | None = None,
          tiers: Iterable[str] | None = ("test",)) -> list[Case]:
    """Registered cases, grouped by family in report order, filtered by family and tier.

    ``family`` is a name or an iterable of names (None: all). ``tiers`` is an iterable
    of tier names (None: all).
    """
    if isinstance(family, str):
        family = (family,)
    for name in family or ():
        if name not in _FAMILIES:
            raise ValueError(f"unknown family {name!r}; known: {sorted(_FAMILIES)}")
    tiers = None if tiers is None else tuple(tiers)
    for tier in tiers or ():
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; known: {list(TIERS)}")
    out = [c for c in _CASES.values()
           if (family is None or c.family in family) and (tiers is None or c.tier in tiers)]
    return sorted(out, key=lambda c: _family_key(c.family))


def get(name: str) -> Case:
    """The case called ``name``."""
    if name not in _CASES:
        raise ValueError(f"unknown case {name!r}")
    return _CASES[name]


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()
