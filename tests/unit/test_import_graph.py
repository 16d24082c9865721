"""The two programs' modules import each other without cycles, counting the
imports made only for type checking (``if TYPE_CHECKING:``) too: a component
that needs its owner gets a narrow context, not the owner's module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rendezvous", "webpeer")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every project module that ``path`` (module ``name``) imports, wherever
    the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from . import x" and "from pkg import module" name modules too.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in modules}
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in files}
    return {module_name(path): imports_of(path, module_name(path), modules) for path in files}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(edges.get(node, ())):
            if (cycle := visit(target)) is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(edges):
        if (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    assert "webpeer.engine" in edges and "webpeer.link" in edges["webpeer.engine"]
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one_through_a_type_checking_import(tmp_path: Path) -> None:
    # The check itself must see what it is there to catch.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .node import PeerNode\n"
    path = tmp_path / "component.py"
    path.write_text(source)
    assert imports_of(path, "webpeer.component", {"webpeer.node", "webpeer.component"}) == {"webpeer.node"}


def test_no_class_is_a_mixin() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    assert not node.name.endswith("Mixin"), f"{path.name}: {node.name}"
