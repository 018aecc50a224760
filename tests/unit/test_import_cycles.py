"""No module of runnable_k8s imports itself back through others (type-only imports included):
a cycle makes a module's meaning depend on which side happens to load first, and hides which
layer owns what. grimp (installed with import-linter) builds the graph from the source."""

from __future__ import annotations

import grimp


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_the_finder_reports_a_cycle_and_nothing_else() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_runnable_k8s_imports_itself_back() -> None:
    graph = grimp.build_graph("runnable_k8s", cache_dir=None)
    imported_by = graph.find_modules_directly_imported_by
    edges = {module: set(imported_by(module)) for module in graph.modules}
    assert len(edges) > 50  # the graph is the package's, not an empty one
    cycles = _cycles(edges)
    chains = [
        f"{a} -> {b} (line {detail['line_number']})"
        for cycle in cycles
        for a in cycle
        for b in sorted(edges[a] & set(cycle))
        for detail in graph.get_import_details(importer=a, imported=b)[:1]
    ]
    assert cycles == [], "import cycles:\n" + "\n".join(chains)
