"""The package's layers, checked on its source: data -> models -> kernels -> smoothing -> selection -> checkpoint ->
modules / attacks / callbacks -> config -> apps (README, Layout). `make lint` checks the same layers, more
strictly, with import-linter (pyproject.toml); this file checks them too (in the suite), and what import-linter
does not: that an import deferred into a function says why.

- a module imports only from its own layer or a lower one (library code never imports the Lightning
  modules or the apps);
- there is no import circle between the package's modules, counting imports deferred into functions;
- an import of the package's own modules is deferred into a function body only with a comment that says
  why (on its line or the line above), e.g. it pulls in a heavy third-party module on a CLI start-up path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower number = lower layer. A module's layer is that of its longest matching prefix.
LAYERS = {
    "vrs.errors": 0, "vrs.utils": 0, "vrs.analysis": 0,
    "vrs.data": 1,
    "vrs.models": 2,
    "vrs.kernels": 3,
    "vrs.smoothing": 4,
    "vrs.selection": 5,
    "vrs.checkpoint": 6, "vrs.importers": 6,
    "vrs.modules": 7, "vrs.attacks": 7,
    "vrs.callbacks": 8,
    "vrs.config": 9, "vrs.config_schema": 9, "vrs.preflight": 9,
    "vrs.apps": 10,
    # the demo driver (python -m vrs.demo) and the package's __init__
    "vrs.demo": 11, "vrs": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    # "vrs" (the package's __init__) matches only itself: a new folder must be placed in LAYERS explicitly
    best = max((p for p in LAYERS if name == p or (p != "vrs" and name.startswith(p + "."))), key=len, default=None)
    assert best is not None, f"{name} has no layer: add it to LAYERS and to the README's Layout section"
    return LAYERS[best]


MODULES = {module_name(p): p for p in sorted((SRC / "vrs").rglob("*.py"))}


def resolve(node: ast.AST, here: str, is_package: bool) -> list[str]:
    """The package modules an import statement names (`from vrs.x import y` counts vrs.x.y when that is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = here.split(".") if is_package else here.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name.startswith("vrs") and name:
            out.append(name)
    return out


def imports(name: str) -> list[tuple[str, int, bool, bool]]:
    """(imported module, line, deferred into a function, has a comment) for each package import of `name`."""
    path = MODULES[name]
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    out = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                line = lines[child.lineno - 1]
                above = lines[child.lineno - 2].strip() if child.lineno >= 2 else ""
                commented = "#" in line or above.startswith("#")
                for target in resolve(child, name, path.name == "__init__.py"):
                    out.append((target, child.lineno, deferred, commented))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # typing-only imports do not run
            else:
                visit(child, deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


GRAPH = {name: imports(name) for name in MODULES}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    upward = [f"{name}:{line} imports {target} (layer {layer(target)} > {layer(name)})"
              for target, line, _, _ in GRAPH[name] if layer(target) > layer(name)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    edges = {name: sorted({t for t, *_ in GRAPH[name] if t != name and not name.startswith(t + ".")
                           and not t.startswith(name + ".")})
             for name in MODULES}
    # Tarjan's strongly connected components
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not circles, f"import circles: {circles}"


def test_deferred_package_imports_say_why():
    silent = [f"{name}:{line} defers `import {target}` without a comment saying why"
              for name in MODULES for target, line, deferred, commented in GRAPH[name] if deferred and not commented]
    assert not silent, "\n".join(silent)
