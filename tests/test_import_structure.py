"""The layering of ``jaxflows``: no import cycle between its top-level subpackages.

Every module under ``jaxflows/`` is parsed with ``ast`` (nothing is imported) and each import of
``jaxflows.Y...`` from a module of ``jaxflows.X`` (``X != Y``; ``X``, ``Y`` top-level subpackages
or modules such as ``bijectors``, ``nn``, ``cli``) adds an edge ``X -> Y``. Imports at module
level, inside functions and under ``if TYPE_CHECKING`` count alike, and so do
``importlib.import_module`` calls with a literal ``'jaxflows.Y...'`` name (or an f-string that
starts with one). The graph must be acyclic; a failure prints each cycle with the importing
files and lines.

Also: importing the engine (``jaxflows.train``) imports no model.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "jaxflows"
ROOT_NODE = "jaxflows"            # the package's own __init__.py


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str | None:
    """``jaxflows.X.y.z`` -> ``X``; ``jaxflows`` -> ``jaxflows``; outside the package -> None."""
    parts = module.split(".")
    if parts[0] != "jaxflows":
        return None
    return parts[1] if len(parts) > 1 else ROOT_NODE


def _units():
    return {p.stem if p.is_file() else p.name for p in PKG.iterdir()
            if (p.is_file() and p.suffix == ".py" and p.stem != "__init__")
            or (p.is_dir() and (p / "__init__.py").exists())}


def _resolve_from(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_prefix(arg: ast.expr) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        # "jaxflows.data.{name}" names jaxflows.data; "jaxflows.{x}" names nothing we can see.
        return head.rsplit(".", 1)[0] if "." in head else None
    return None


def _imported_modules(path: Path):
    """Yields ``(imported module name, line)`` for every import in the file."""
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    units = _units()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(node, module, is_pkg)
            if target == "jaxflows":         # from jaxflows import nn, bijectors, __version__
                for alias in node.names:
                    yield (f"jaxflows.{alias.name}" if alias.name in units else target,
                           node.lineno)
            else:
                yield target, node.lineno
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in ("import_module", "__import__"):
                lit = _literal_prefix(node.args[0])
                if lit:
                    yield lit, node.lineno


def import_graph() -> dict[tuple[str, str], list[str]]:
    """``{(X, Y): ['jaxflows/X/file.py:LINE', ...]}`` for every cross-unit import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        src = _unit(_module_name(path))
        for target, line in _imported_modules(path):
            dst = _unit(target)
            if dst is not None and dst != src:
                edges[(src, dst)].append(f"{path.relative_to(ROOT)}:{line}")
    return dict(edges)


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan), each sorted."""
    succ = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    nodes = sorted({n for e in edges for n in e})
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return sorted(out)


def describe(edges, comp) -> str:
    inside = set(comp)
    lines = [" <-> ".join(comp) + ":"]
    for (a, b), where in sorted(edges.items()):
        if a in inside and b in inside:
            lines.append(f"  {a} -> {b}: " + ", ".join(where))
    return "\n".join(lines)


def test_graph_sees_the_known_edges():
    """The parser is not vacuous: edges every version of the package has are found."""
    edges = import_graph()
    assert ("nn", "bijectors") in edges
    assert ("models", "nn") in edges
    assert ("models", "train") in edges or ("train", "models") in edges


def test_no_import_cycle_between_subpackages():
    edges = import_graph()
    found = cycles(edges)
    report = "\n".join(describe(edges, c) for c in found)
    print(report)
    assert not found, "import cycles between jaxflows subpackages:\n" + report


def test_bijectors_import_nothing_from_nn():
    """bijectors/ is pure math: nn may import it, never the other way round."""
    edges = import_graph()
    assert ("bijectors", "nn") not in edges, edges.get(("bijectors", "nn"))


def test_importing_the_engine_imports_no_model():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    code = ("import sys, jaxflows.train; "
            "assert not [m for m in sys.modules if m.startswith('jaxflows.models')], "
            "sorted(m for m in sys.modules if m.startswith('jaxflows.models'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
