"""Data flows one way: every first-party import points down the pipeline, never up.

    manual/      imports only manual/ (and jax.numpy, jax.lax, jax.random, numpy:
                 test_hand_derived.py checks that side)
    reference/   never imports manual/ or suite/ (an oracle shares no line with the code
                 it judges)
    suite/       layered (LAYERS): a module imports only modules of a lower layer, or of
                 its own layer inside its own package (suite.cases.rnn may use
                 suite.cases.sequences). cases -> run -> compare -> rows/studies -> report:
                 suite.cases never sees run, studies, report or bench.

The import graph has no cycle, and no first-party import hides inside a function (a
lazy import is how a cycle is usually dodged). The checker walks the AST of every
module; the planted sources below prove it catches each kind of violation.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRST_PARTY = ("manual", "reference", "suite")

# Lower layers first. A module's layer is that of its longest matching prefix.
LAYERS = {
    "suite.version": 0, "suite.results": 0, "suite.io": 0, "suite.config": 0,
    "suite.compare": 1, "suite.plots": 1, "suite.timing": 1, "suite.custom_grad": 1,
    "suite.sharded": 1,  # manual/ on a mesh: the registry (2) and the studies (3) use it
    "suite.cases": 2,
    "suite.studies": 3,
    "suite.run": 4,
    "suite.report": 5, "suite.bench": 5, "suite.testing": 6,
    # the checker's package, its concepts in the order its stages use them
    "suite.check.stepresult": 5.05, "suite.check.marks": 5.05, "suite.check.diagnosis": 5.05,
    "suite.check.result": 5.1, "suite.check.options": 5.1, "suite.check.recording": 5.2,
    "suite.check.recast": 5.2, "suite.check.pairs": 5.2,
    "suite.check.kinds": 5.2, "suite.check.runs": 5.3, "suite.check.probes": 5.4,
    "suite.check.extra": 5.5, "suite.check.judge": 5.5, "suite.check.audit": 5.55,
    "suite.check.api": 5.6, "suite.check.jvp": 5.6,
    "suite.check.steps": 5.65,
    "suite.check": 5.7,
    "suite.checkfile": 6,
    "suite.learn": 6,  # the exercise notebooks: the checker (5) and the catalog

    "suite.cli": 7,
    "suite": 8,
}


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Every first-party module outside the tests: name -> path."""
    found = {}
    for top in FIRST_PARTY:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).parts
            # suite/learn/notebooks/ holds the learners' notebooks (jupytext text), not modules
            if "tests" not in parts and parts[:3] != ("suite", "learn", "notebooks"):
                found[module_name(path, root)] = path
    return found


def _resolve(name: str, known: set[str]) -> str:
    """The longest known module that ``name`` lies in (``suite.cases.Case`` -> suite.cases)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports(source: str, module: str, known: set[str], *, is_package: bool = False):
    """(target module, line, lazy) for every first-party import in ``source``."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def lazy(node):
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                return True
        return False

    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from suite import compare` imports the module suite.compare
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FIRST_PARTY:
                yield _resolve(name, known) or name, node.lineno, lazy(node)


def layer(module: str) -> int | None:
    best = _resolve(module, set(LAYERS))
    return LAYERS.get(best)


def _subpackage(module: str) -> str:
    """The package a module belongs to for same-layer imports (suite.cases.rnn -> suite.cases)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def direction_violations(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Upward, sideways, lazy and cross-package violations in an import graph."""
    found = []
    for source, edges in graph.items():
        top = source.split(".")[0]
        for target, line, is_lazy in edges:
            where = f"{source}:{line} imports {target}"
            if is_lazy:
                found.append(f"{where} inside a function (a lazy first-party import)")
            if top == "manual" and not target.startswith("manual"):
                found.append(f"{where}: manual/ imports only manual/")
            elif top == "reference" and target.split(".")[0] != "reference":
                found.append(f"{where}: reference/ must not import manual/ or suite/")
            elif top == "suite" and target.split(".")[0] == "suite":
                mine, theirs = layer(source), layer(target)
                if mine is None or theirs is None:
                    found.append(f"{where}: {source if mine is None else target} has no layer "
                                 "in LAYERS")
                elif theirs > mine or (theirs == mine
                                       and _subpackage(source) != _subpackage(target)):
                    found.append(f"{where}: layer {theirs} from layer {mine} (upward)")
    return found


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), plus self-imports."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            self_loop = any(w == v for w, _, _ in graph.get(v, ()))
            if len(component) > 1 or self_loop:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def project_graph(root: pathlib.Path = ROOT) -> dict[str, list[tuple[str, int, bool]]]:
    found = modules(root)
    known = set(found)
    return {name: [e for e in imports(path.read_text(), name, known,
                                      is_package=path.name == "__init__.py") if e[0] != name]
            for name, path in found.items()}


def test_every_suite_module_has_a_layer():
    missing = [m for m in modules() if m.startswith("suite") and layer(m) is None]
    assert not missing, f"add these to LAYERS: {missing}"


def test_imports_flow_one_way():
    found = direction_violations(project_graph())
    assert not found, "imports against the pipeline:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(project_graph())
    assert not found, f"import cycles: {found}"


# --- the checker catches each kind of violation ----------------------------------------

KNOWN = {"suite", "suite.cases", "suite.cases.rnn", "suite.run", "suite.report", "suite.compare",
         "suite.studies", "suite.studies.training", "manual", "manual.rnn", "reference",
         "reference.autodiff"}


def _graph(**sources):
    return {name.replace("__", "."): list(imports(src, name.replace("__", "."), KNOWN))
            for name, src in sources.items()}


@pytest.mark.parametrize("module,source", [
    ("suite__cases__rnn", "from suite import report\n"),             # cases reading the report
    ("suite__cases__rnn", "import suite.run\n"),                      # cases reading the runner
    ("suite__cases__rnn", "from suite.studies import training\n"),    # cases reading studies
    ("suite__compare", "from suite.cases import rnn\n"),              # policy reading cases
    ("suite__run", "def f():\n    from suite import compare\n"),     # a lazy import
    ("suite__studies__training", "from suite.run import run_case\n"),  # a study reading run
    ("manual__rnn", "from reference import autodiff\n"),              # manual using the oracle
    ("reference__autodiff", "from manual import rnn\n"),              # the oracle using manual
    ("suite__cases__rnn", "from suite import cli\n"),                 # unknown layer (cli not
])                                                                    # in KNOWN: resolves up)
def test_planted_upward_import_is_caught(module, source):
    assert direction_violations(_graph(**{module: source})), source


def test_planted_cycle_is_caught():
    graph = _graph(suite__run="from suite import report\n",
                   suite__report="from suite import run\n")
    assert cycles(graph) == [["suite.report", "suite.run"]]


def test_downward_imports_pass():
    graph = _graph(suite__report="from suite import run\nfrom suite.cases import rnn\n",
                   suite__cases__rnn="from suite.cases import common\nfrom manual import rnn\n",
                   manual__rnn="from manual import _checks\n")
    assert direction_violations(graph) == [] and cycles(graph) == []
