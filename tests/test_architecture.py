"""The package's import structure: layers import downwards only, no cycle, no import hidden in a function.

Layers (README, Architecture): io, precision, grad_cache, harness <- modeling <- objectives <- export <- training <- cli.
`clusterns/__init__.py` is the public surface above them all."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clusterns"
LAYERS = {"io": 0, "precision": 0, "grad_cache": 0, "harness": 0, "modeling": 1, "objectives": 2, "export": 3, "st_modules": 3,
          "training": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(node: ast.AST) -> list[str]:
    """The clusterns modules an import statement loads (a `from pkg import name` loads pkg.name if it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "clusterns"]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clusterns" and not node.level:
        submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
        names = [a.name for a in node.names if f"{node.module}.{a.name}" not in MODULES]
        return submodules + ([node.module] if names else [])
    return []


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = {m for node in ast.walk(tree) for m in imported_modules(node) if m != name}
    return edges


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_relative_imports_and_none_inside_functions():
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: relative import (use clusterns.…)"
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            hidden = [m for n in ast.walk(func) for m in imported_modules(n)]
            assert not hidden, f"{name}.{func.name} imports {hidden} inside the function (import at the top)"


def test_layers_import_downwards_only():
    for src, targets in graph().items():
        if src == "clusterns":
            continue  # the public surface
        for dst in targets:
            assert dst != "clusterns", f"{src} imports the package surface; import the defining module"
            assert layer(src) is not None and layer(dst) is not None, (src, dst)
            assert layer(dst) <= layer(src), f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)}): upwards"


def test_no_import_cycle():
    edges = {k: v for k, v in graph().items() if k != "clusterns"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt in edges and state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if state.get(node) is None:
            visit(node)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The graph reader finds imports at every depth (so the tests above can fail)."""
    code = "import os\ndef f():\n    from clusterns.cli.train import train_main\n"
    tree = ast.parse(code)
    assert [m for n in ast.walk(tree) for m in imported_modules(n)] == ["clusterns.cli.train"]
    assert layer("clusterns.cli.train") > layer("clusterns.modeling.encoder")
