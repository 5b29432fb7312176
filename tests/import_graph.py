"""The import graph of a package, from its source: every ``import x`` and
``from .x import y``, at the top, inside functions and under TYPE_CHECKING
(a lazy or type-only import that only dodges a cycle is still a cycle).

Run as a script to print the cycles of a checkout's zope_lb:
``python tests/import_graph.py [ROOT]``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _typing_only(tree: ast.Module) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return nodes


def import_edges(package_dir: Path) -> dict[tuple[str, str], str]:
    """(importer, imported) -> where: ``line N, top|in a function|TYPE_CHECKING``."""
    modules = module_files(package_dir)
    edges: dict[tuple[str, str], str] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _typing_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                subs = [f"{source}.{a.name}" for a in node.names
                        if f"{source}.{a.name}" in modules]
                # "from . import api" imports the submodule; its package is no edge
                targets = subs if len(subs) == len(node.names) else [source, *subs]
            else:
                continue
            kind = ("TYPE_CHECKING" if id(node) in typing_only
                    else "top" if node.col_offset == 0 else "in a function")
            for target in targets:
                if target in modules and target != name:
                    edges.setdefault((name, target), f"line {node.lineno}, {kind}")
    return edges


def cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    """The strongly connected components with more than one module, sorted."""
    graph: dict[str, list[str]] = {}
    for source, target in edges:
        graph.setdefault(source, []).append(target)
        graph.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few dozen modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def main(root: str = ".") -> int:
    edges = import_edges(Path(root) / "zope_lb")
    found = cycles(edges)
    for component in found:
        print("cycle:", " ".join(component))
        for (source, target), where in sorted(edges.items()):
            if source in component and target in component:
                print(f"    {source} -> {target}  ({where})")
    if not found:
        print("no cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
