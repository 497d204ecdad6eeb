"""Print how the project's rooms import each other: ``python scripts/import_graph.py``.

Counts every import statement (module level and inside functions) with grimp, the graph
library behind import-linter, and prints: imports between rooms, imports that point outward
(against the layering domain <- tasks <- workers), imports between stage modules, and import
cycles (strongly connected components of more than one module).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import grimp

ROOMS = ("config", "domain", "tasks", "workers", "sandbox", "benchmarks")
# A room may import the rooms listed after it; anything else points outward.
INWARD = {
    "config": set(),
    "domain": {"config"},
    "tasks": {"domain", "config"},
    "workers": {"tasks", "domain", "config", "sandbox", "benchmarks"},
    "sandbox": {"domain", "config"},
    "benchmarks": {"workers", "tasks", "domain", "config", "sandbox"},
}
SHARED_TASK_MODULES = {"tasks", "tasks.base"}


def room(module: str) -> str:
    return module.split(".", 1)[0]


def strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Tarjan's algorithm over the module graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    present = [r for r in ROOMS if (Path(__file__).resolve().parent.parent / r).is_dir()]
    # TYPE_CHECKING-only imports are annotations, not run-time dependencies.
    graph = grimp.build_graph(*present, include_external_packages=False, cache_dir=None,
                              exclude_type_checking_imports=True)
    modules = set(graph.modules)
    between: Counter[tuple[str, str]] = Counter()
    outward: list[str] = []
    stages: list[str] = []
    for importer in sorted(modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            a, b = room(importer), room(imported)
            if a != b:
                between[(a, b)] += 1
                if b not in INWARD.get(a, set()):
                    outward.append(f"{importer} -> {imported}")
            elif a == "tasks" and imported not in SHARED_TASK_MODULES \
                    and importer not in SHARED_TASK_MODULES:
                stages.append(f"{importer} -> {imported}")
    print("imports between rooms (importing modules -> imported modules, edges):")
    for (a, b), n in sorted(between.items()):
        print(f"  {a:>10} -> {b:<10} {n}")
    print(f"outward imports: {len(outward)}")
    for line in outward:
        print(f"  {line}")
    print(f"stage -> stage imports: {len(stages)}")
    for line in stages:
        print(f"  {line}")
    cycles = strongly_connected(graph, modules)
    print(f"import cycles: {len(cycles)}")
    for comp in cycles:
        print(f"  {len(comp)} modules: {', '.join(comp)}")
    return 1 if outward or stages or cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
