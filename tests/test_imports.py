"""Imports run one way: no cycles, no private names across modules, no driver in the engine.

The graph is read from the source with `ast`, so it holds every import, at module level
and inside functions alike (a function-local import hides a cycle from Python, not from
this test). An edge goes from a module to the project module it names: `from engine.data
import Suite` is an edge to the package `engine.data`, `from engine.data.suite import
Suite` one to `engine.data.suite`. A package whose `__init__` imports every module in its
folder (`pkgutil.iter_modules(__path__)`) has an edge to each of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "sweep")
DRIVER_LIBRARIES = ("ray", "mlflow", "optuna")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _project(name: str) -> str | None:
    """The longest project module that `name` is or lies in, else None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import in `module`."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _project(alias.name)
                if target is not None:
                    found.append((target, []))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:  # `from engine.data import digits`: a module
                    found.append((submodule, []))
                elif (target := _project(source)) is not None:
                    found.append((target, [alias.name]))
    return found


def _graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    inside = {m for m in MODULES if m.split(".")[0] in packages}
    graph: dict[str, set[str]] = {m: set() for m in inside}
    for module in inside:
        for target, _ in _imports(module):
            if target in inside and target != module:
                graph[module].add(target)
        if _is_package(module) and "pkgutil.iter_modules(__path__)" in MODULES[module].read_text():
            prefix = module + "."
            graph[module] |= {
                m for m in inside if m.startswith(prefix) and "." not in m[len(prefix) :]
            }
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path a -> ... -> a, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_known_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_level_and_package_imports() -> None:
    graph = _graph(("engine",))
    # engine.config imports the data package, which imports each of its modules.
    assert "engine.data" in graph["engine.config"]
    assert {"engine.data.digits", "engine.data.openood"} <= graph["engine.data"]
    # sweep.cli imports engine.train inside a command function: still an edge.
    assert "engine.train" in {t for t, _ in _imports("sweep.cli")}


def test_engine_imports_have_no_cycle() -> None:
    cycle = _find_cycle(_graph(("engine",)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_engine_and_sweep_imports_have_no_cycle() -> None:
    cycle = _find_cycle(_graph(PACKAGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_engine_never_imports_sweep() -> None:
    wrong = [
        (module, target)
        for module in MODULES
        if module.startswith("engine")
        for target, _ in _imports(module)
        if target.startswith("sweep")
    ]
    assert wrong == []


def test_engine_takes_no_private_names_from_other_modules() -> None:
    taken = []
    for module in (m for m in MODULES if m.split(".")[0] == "engine"):
        for target, names in _imports(module):
            taken += [f"{module}: {target}.{n}" for n in names if n.startswith("_")]
        # `import engine.x as x` then `x._name`: a private name all the same.
        tree = ast.parse(MODULES[module].read_text())
        aliases = {
            alias.asname or alias.name: _project(alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if _project(alias.name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if f"{_absolute(module, node)}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = (
                            f"{_absolute(module, node)}.{alias.name}"
                        )
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                taken.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    assert taken == [], taken


def test_training_and_prediction_load_no_driver_library() -> None:
    code = (
        "import sys, engine.train, engine.predict; "
        f"print(sorted(m for m in {DRIVER_LIBRARIES!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
