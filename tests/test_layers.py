"""The package's shape: no import cycles, and each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import precheck

ROOT = Path(precheck.__file__).parent

# What each layer may import from the package (besides itself and the shared top modules).
SHARED = {"precheck", "precheck.errors", "precheck.clock", "precheck.config", "precheck.tasks"}
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "layout": set(),  # reading layouts in a child process: nothing of ours
    "events": {"storage"},
    "domain": {"events", "projections"},
    "projections": {"events", "domain"},
    "service": {"domain", "events", "projections", "storage", "layout"},
    "runner": {"domain", "events", "projections", "storage"},
    "client": set(),  # speaks HTTP only: none of the server's layers
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str], type_only: bool = False) -> set[str]:
    """Package modules `path` imports at run time (lazy imports inside functions included);
    with `type_only`, also those imported for type checking alone."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_only:
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("precheck"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("precheck"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found & modules


def _graph(type_only: bool = False) -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules, type_only) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """A graph with a cycle is reported with the modules around it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    """No module of the package imports itself through others, even lazily or for type
    checking alone: a circle is one for a reader all the same."""
    graph = _graph(type_only=True)
    assert len(graph) > 40  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_layers_import_only_the_layers_below() -> None:
    """The pure core and the boundaries import only what their layer may."""
    wrong = []
    for module, imported in _graph().items():
        layer = module.split(".")[1] if module.count(".") >= 1 else None
        if layer not in ALLOWED:
            continue
        for target in imported:
            target_layer = target.split(".")[1] if target.count(".") >= 1 else None
            if target in SHARED or target_layer == layer:
                continue
            if target_layer not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_domain_does_no_io() -> None:
    """The domain reads no clock, makes no ids and touches no disk, network or Docker."""
    banned = {"asyncio", "aiohttp", "aiodocker", "aiosqlite", "sqlite3", "uuid", "os", "time"}
    for path in (ROOT / "domain").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        names |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
        }
        assert names & banned == set(), path.name
        assert "utcnow" not in path.read_text(encoding="utf-8"), path.name
