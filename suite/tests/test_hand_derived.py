"""manual/ is hand-derived: it imports only jax.numpy, jax.lax, jax.random, numpy and
itself, and never reaches a differentiating transform.

The checker walks each module's AST (so comments and docstrings may name jax.grad
freely); the planted sources below prove that it catches each way of cheating.
"""

import ast
import pathlib

import pytest

MANUAL = pathlib.Path(__file__).resolve().parents[2] / "manual"
ALLOWED_MODULES = {"jax.numpy", "jax.lax", "jax.random", "numpy", "__future__"}
ALLOWED_FROM_JAX = {"numpy", "lax", "random"}
TRANSFORMS = {"grad", "value_and_grad", "vjp", "jvp", "jacfwd", "jacrev", "jacobian",
              "hessian", "linearize", "linear_transpose", "custom_vjp", "custom_jvp",
              "closure_convert", "checkpoint", "remat"}


def _allowed(module):
    return module in ALLOWED_MODULES or module == "manual" or module.startswith("manual.")


def violations(source, filename="<source>"):
    """Every forbidden import or transform use in ``source``, as readable strings."""
    found = []
    jax_aliases = {"jax"}
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _allowed(alias.name):
                    found.append(f"{where}: import {alias.name}")
                elif alias.name.startswith("jax.") and alias.asname is None:
                    found.append(f"{where}: 'import {alias.name}' binds the whole jax namespace")
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            names = {a.name for a in node.names}
            if node.level:  # relative imports stay inside manual/
                pass
            elif module == "jax":
                if names - ALLOWED_FROM_JAX:
                    extra = ", ".join(sorted(names - ALLOWED_FROM_JAX))
                    found.append(f"{where}: from jax import {extra}")
            elif not _allowed(module):
                found.append(f"{where}: from {module} import ...")
            inside = module == "manual" or module.startswith("manual.") or node.level
            if names & TRANSFORMS and not inside:
                transforms = ", ".join(sorted(names & TRANSFORMS))
                found.append(f"{where}: imports {transforms} from {module}")
        elif isinstance(node, ast.Attribute) and node.attr in TRANSFORMS:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in jax_aliases:
                found.append(f"{where}: jax transform .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in {"__import__", "eval", "exec"}:
                found.append(f"{where}: dynamic {node.func.id}()")
            if node.func.id == "getattr" and any(
                    isinstance(a, ast.Constant) and a.value in TRANSFORMS for a in node.args):
                found.append(f"{where}: getattr of a transform")
    return found


def test_manual_is_hand_derived():
    files = sorted(MANUAL.rglob("*.py"))
    assert files, f"no sources under {MANUAL}"
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(MANUAL.parent)))]
    assert not found, "manual/ must be hand-derived:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    "import jax\n",
    "import jax.numpy\ny = jax.grad(f)\n",
    "from jax import grad\n",
    "from jax import vjp as pullback\n",
    "from jax import numpy as jnp, jacrev\n",
    "import jax.numpy as jnp\nimport jax as j\n",
    "from jax.experimental import jet\n",
    "import torch\n",
    "from functools import partial\n",
    "f = getattr(mod, 'value_and_grad')\n",
    "m = __import__('jax')\n",
])
def test_checker_catches_planted_cheats(source):
    assert violations(source), f"not caught: {source!r}"


def test_checker_allows_the_house_style():
    clean = ("import jax.numpy as jnp\nfrom jax import lax, random\nimport numpy as np\n"
             "from manual import activations\nfrom manual.losses import grad\n"
             "def grad(x):\n    '''jax.grad would be cheating; this is a hand-derived grad.'''\n"
             "    return jnp.tanh(x)\n")
    assert violations(clean) == []
