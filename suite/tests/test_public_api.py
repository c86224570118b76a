"""The public API is declared, and private names stay private.

- Every public module of manual/, reference/ and suite/ (not the tests, not a module
  whose name starts with "_") declares ``__all__``, and every name in it exists.
- No module uses another module's underscore names: ``from x import _name``, or
  ``x._name`` on an imported first-party module. A private *module* (manual/_checks.py)
  serves its own package only.
- Every public function of manual/ and reference/ has type hints on its arguments and
  its return.

The checks walk the AST; the planted sources below prove that each one catches its
violation.
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIRST_PARTY = ("manual", "reference", "suite")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(include_tests: bool):
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if parts[:3] == ("suite", "learn", "notebooks"):  # learners' notebooks, not modules
                continue
            if include_tests or "tests" not in parts:
                yield _module_name(path), path


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private_uses(source: str, module: str) -> list[str]:
    """Every use of another module's underscore name in ``source`` (module ``module``)."""
    found, aliases = [], {}
    top = module.split(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FIRST_PARTY:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
                    if any(_is_private(p) for p in a.name.split(".")) and \
                            a.name.split(".")[0] != top:
                        found.append(f"{module}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module and \
                node.module.split(".")[0] in FIRST_PARTY:
            base = node.module
            for a in node.names:
                full = f"{base}.{a.name}"
                private_path = any(_is_private(p) for p in base.split("."))
                if _is_module(full):
                    aliases[a.asname or a.name] = full
                    if (_is_private(a.name) or private_path) and base.split(".")[0] != top:
                        found.append(f"{module}:{node.lineno}: private module {full}")
                elif _is_private(a.name):
                    found.append(f"{module}:{node.lineno}: from {base} import {a.name}")
                elif private_path and base.split(".")[0] != top:
                    found.append(f"{module}:{node.lineno}: from private module {base}")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and \
                isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr} "
                         f"({aliases[node.value.id]})")
    return found


def unhinted(source: str, module: str) -> list[str]:
    """Public top-level functions of ``source`` missing an argument or return hint."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                not node.name.startswith("_"):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            missing = [a.arg for a in args if a.annotation is None]
            if missing or node.returns is None:
                found.append(f"{module}.{node.name}: no hint for "
                             f"{', '.join(missing + ([] if node.returns else ['return']))}")
    return found


def test_public_modules_declare_all():
    missing, wrong = [], []
    for name, path in _sources(include_tests=False):
        if any(_is_private(p) for p in name.split(".")):
            continue
        tree = ast.parse(path.read_text())
        targets = [t for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
        targets += [n.target for n in tree.body if isinstance(n, ast.AnnAssign)]
        declared = any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
        if not declared:
            missing.append(name)
            continue
        module = importlib.import_module(name)
        wrong += [f"{name}.{n}" for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"modules without __all__: {missing}"
    assert not wrong, f"__all__ names that do not exist: {wrong}"


def test_no_module_uses_another_modules_private_names():
    found = [v for name, path in _sources(include_tests=True)
             for v in private_uses(path.read_text(), name)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_public_functions_of_manual_and_reference_are_typed():
    found = [v for name, path in _sources(include_tests=False)
             if name.split(".")[0] in ("manual", "reference")
             and not any(_is_private(p) for p in name.split("."))
             for v in unhinted(path.read_text(), name)]
    assert not found, "untyped public functions:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    "from manual.conv import _input_gradient\n",
    "from manual import conv\nconv._input_gradient(1, 2, 3)\n",
    "import manual.conv as c\nc._weight_gradient\n",
    "from manual._checks import require_float\n",          # manual's private module, from suite
    "from manual import _bptt\n",
    "import manual._bptt\n",
])
def test_planted_private_use_is_caught(source):
    assert private_uses(source, "suite.tests.planted"), source


def test_private_modules_serve_their_own_package():
    source = "from manual._checks import require_float\nfrom manual import _bptt\n"
    assert private_uses(source, "manual.conv") == []
    assert private_uses("import suite\nsuite.__version__\n", "suite.cli") == []


def test_planted_untyped_function_is_caught():
    assert unhinted("def f(x, *, y: int) -> int:\n    return 1\n", "m") == ["m.f: no hint for x"]
    assert unhinted("def f(x: int):\n    return 1\n", "m") == ["m.f: no hint for return"]
    assert unhinted("def _f(x):\n    return 1\n", "m") == []
