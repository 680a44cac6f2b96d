"""Layers only point down: filters/ and packing/ at the bottom, train/ on packing/, curate/ on top.

Every import of every first-party module is read with `ast`, at module level and inside
functions alike (a function-level import is still an arrow between layers), so a module that
reaches up a layer, or a circle of modules importing each other, fails here with file:line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "filters", "packing", "train")
BOTTOM = ("filters", "packing")  # import nothing from curate/ or train/
ALLOWED = {"filters": {"filters"}, "packing": {"packing"}, "train": {"train", "packing"},
           "curate": set(PACKAGES)}


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file relative to root, for every .py file of the packages
    (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root)
            parts = rel.with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel
    return out


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import in the file, nested ones included; relative
    imports resolved. `from a.b import c` gives both a.b and a.b.c (c may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES):
    """{module: {imported first-party module: first line}} over the packages' modules."""
    files = module_files(root, packages)

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in files:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for name, line in imports(module, root / path):
            target = resolve(name)
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph, files


def upward_imports(graph, files) -> list[str]:
    """"file:line: module imports target" for every import its layer may not make (ALLOWED)."""
    return [f"{files[module].as_posix()}:{line}: {module} imports {target}"
            for module, edges in sorted(graph.items()) for target, line in edges.items()
            if target.split(".")[0] not in ALLOWED[module.split(".")[0]]]


def find_cycle(graph) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def test_bottom_layers_import_nothing_from_curate_or_train():
    graph, files = import_graph()
    bad = [b for b in upward_imports(graph, files) if b.split(": ", 1)[1].split(".")[0] in BOTTOM]
    assert not bad, "filters/ and packing/ must not import curate/ or train/:\n" + "\n".join(bad)


def test_train_imports_only_packing():
    graph, files = import_graph()
    bad = [b for b in upward_imports(graph, files) if b.split(": ", 1)[1].startswith("train")]
    assert not bad, "train/ may import packing/ only:\n" + "\n".join(bad)


def test_no_import_cycle_between_first_party_modules():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_nested_and_relative_imports_and_circles(tmp_path):
    """The checker itself: a function-level import up a layer, a relative import and a circle are found."""
    (tmp_path / "packing").mkdir()
    (tmp_path / "curate").mkdir()
    (tmp_path / "packing" / "__init__.py").write_text("")
    (tmp_path / "curate" / "__init__.py").write_text("")
    (tmp_path / "packing" / "a.py").write_text("def f():\n    from curate.b import g\n    return g\n")
    (tmp_path / "curate" / "b.py").write_text("from . import c\n")
    (tmp_path / "curate" / "c.py").write_text("import curate.b\n")
    graph, files = import_graph(tmp_path, ("curate", "packing"))
    assert graph["packing.a"] == {"curate.b": 2} and graph["curate.b"] == {"curate": 1, "curate.c": 1}
    assert upward_imports(graph, files) == ["packing/a.py:2: packing.a imports curate.b"]
    assert find_cycle(graph) == ["curate.b", "curate.c", "curate.b"]
    (tmp_path / "curate" / "c.py").write_text("")
    graph, _ = import_graph(tmp_path, ("curate", "packing"))
    assert find_cycle(graph) is None
