"""The shape of the code: slabkit's modules import each other in one direction only.

The layers, lowest first, in the order data flows (README, "How the code is laid out"): a module
may import its own layer and the ones below, never one above, and the import graph (every
``import``/``from`` statement, including lazy ones inside functions and type-only ones) has no
circle. The package root (lazy public names) and the user interfaces sit on top."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "slabkit"

#: (module prefix, layer): lowest first
LAYERS = (
    ("slabkit._version", 0), ("slabkit.errors", 0), ("slabkit.validate", 0),
    ("slabkit.samples", 0),
    ("slabkit.model", 1), ("slabkit.schema", 1),
    ("slabkit.host", 2),
    ("slabkit.plan", 3),
    ("slabkit.slabcount", 4), ("slabkit.backends", 4),
    ("slabkit.capturing", 5),
    ("slabkit.analysis", 6),
    ("slabkit.plots", 7),
    ("slabkit.ui", 8), ("slabkit.widgets", 8), ("slabkit.__main__", 8), ("slabkit", 8),
)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: relative import (slabkit imports absolutely)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slabkit"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in mods)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("slabkit"))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def layer(module: str) -> int:
    for prefix, n in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return n
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_every_module_has_a_layer_and_imports_only_down():
    graph = import_graph()
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_host_never_imports_capturing_analysis_or_ui():
    graph = import_graph()
    bad = [(m, d) for m, deps in graph.items() if m.startswith("slabkit.host")
           for d in deps if d.split(".")[1] in ("capturing", "analysis", "ui", "plots")]
    assert not bad


def test_no_import_circle():
    graph = import_graph()
    # package __init__ files re-export their own modules: an edge from a package to its
    # submodule and back is how re-exporting works, not a circle of knowledge
    def edges(m):
        return {d for d in graph[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_planted_upward_import(tmp_path, monkeypatch):
    """The graph really reads the code: an upward import planted in a copy is found."""
    import shutil
    copy = tmp_path / "slabkit"
    shutil.copytree(PACKAGE, copy)
    target = copy / "host" / "target.py"
    target.write_text(target.read_text() + "\n\ndef _planted():\n"
                      "    from slabkit.ui.cli import main  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    graph = import_graph()
    assert "slabkit.ui.cli" in graph["slabkit.host.target"]
    assert layer("slabkit.ui.cli") > layer("slabkit.host.target")
