"""The package's import rules, checked on the source: Ray only in ``mtl_ray/ray/``, no import cycles
between modules, and ``config.py`` depending on nothing but the errors and the task registry."""

from __future__ import annotations

import ast
from pathlib import Path

import mtl_ray

PACKAGE = Path(mtl_ray.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: annotations only, never imported at run time."""
    skip: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every run-time import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    skip = _type_checking_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, id(node) in top_level))
            out += [(f"{node.module}.{alias.name}", id(node) in top_level) for alias in node.names]
    return out


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_ray_is_imported_only_in_the_ray_shell():
    offenders = []
    for name, path in _modules().items():
        if name == "mtl_ray.ray" or name.startswith("mtl_ray.ray."):
            continue
        for mod, _ in _imports(path):
            if mod == "ray" or mod.startswith("ray."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {mod}")
    assert offenders == []


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for mod, at_top in _imports(path):
            if top_level_only and not at_top:
                continue
            # `from mtl_ray.x import y` names module mtl_ray.x.y if that exists, else mtl_ray.x
            while mod and mod not in modules:
                mod = mod.rpartition(".")[0]
            # importing a.b.c runs a/__init__ and a/b/__init__ first: those are dependencies too
            while mod and mod != "mtl_ray":
                if mod != name and not name.startswith(mod + "."):
                    deps.add(mod)
                mod = mod.rpartition(".")[0]
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    # lazy (function-level) imports count too: a cycle hidden in a function is still a cycle
    assert _cycles(_graph(top_level_only=False)) == []


def test_config_depends_only_on_errors_and_the_task_registry():
    deps = _graph(top_level_only=False)["mtl_ray.config"]
    # the task registry (mtl_ray.tasks and its type modules) and the search-space grammar, a leaf that
    # imports only mtl_ray.errors and validates tune.search_space at start-up
    registry = {m for m in _modules() if m == "mtl_ray.tasks" or m.startswith("mtl_ray.tasks.")}
    allowed = {"mtl_ray.errors", "mtl_ray.overrides", "mtl_ray.tuning", "mtl_ray.tuning.space"} | registry
    assert deps <= allowed, sorted(deps - allowed)
