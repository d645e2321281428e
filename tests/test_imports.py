"""The package's import graph, read from the sources with `ast`: no import circles, and no import that points up.

Layers, lowest first (`LAYERS`): the base modules (no dependencies on the others), the sparse engine (torch only),
the YOLO blocks (no Ultralytics), datasets, the Ultralytics boundary, evaluation, rasters of any size, benchmarks,
the demo, the command line. A module imports its own layer and the layers below it, never one above. That holds
for the imports that run on `import` (module level) without exception, and for the imports inside functions (which
run later, so a circle through them does not fail at once) but for the facades and known circles listed here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparseyolo"
LAYERS = (
    (
        "sparseyolo",
        "sparseyolo.threads",
        "sparseyolo.settings",
        "sparseyolo.boxes",
        "sparseyolo.cliargs",
        "sparseyolo.memory",
    ),
    ("sparseyolo.sparse",),
    ("sparseyolo.nn",),
    ("sparseyolo.data",),
    ("sparseyolo.yolo",),
    ("sparseyolo.eval",),
    ("sparseyolo.mosaic",),
    ("sparseyolo.bench",),
    ("sparseyolo.demo_scenes", "sparseyolo.demo"),
    ("sparseyolo.cli",),
)
# Imports inside functions that point up on purpose: facades that load a higher layer on first use.
UPWARD_FACADES = {
    ("sparseyolo", "sparseyolo.yolo"),  # `sparseyolo.YOLO`, resolved lazily
    ("sparseyolo.yolo.api", "sparseyolo.mosaic"),  # `YOLO.mosaic(...)` runs `sparseyolo.mosaic.predict_mosaic`
}
# Imports inside functions that close a circle, still to be taken apart (each names the import that closes it).
KNOWN_CIRCLES = {
    ("sparseyolo.yolo.api", "sparseyolo.mosaic"),  # the `YOLO.mosaic` facade; the mosaic detector loads a YOLO
    ("sparseyolo.bench.sparse_conv.cli", "sparseyolo.bench.sparse_conv"),  # reads its package's docstring
    ("sparseyolo.mosaic.run", "sparseyolo.mosaic.distributed"),  # the Dask path needs run's Job and window_task
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def resolve(name: str) -> str:
    """The module that `name` (a module, or a name inside one) is imported from."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def imports(module: str, path: Path, module_level: bool) -> set[str]:
    """The sparseyolo modules that `module` imports: at module level, or anywhere (`if TYPE_CHECKING:` left out)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found, todo = set(), list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) + 1 - node.level] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found |= {resolve(f"{base}.{a.name}") for a in node.names}
        elif not (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            todo += [n for n in ast.iter_child_nodes(node) if isinstance(n, (ast.stmt, ast.excepthandler))]
    return {m for m in found if m in MODULES and m != module}


def graph(module_level: bool = True) -> dict[str, set[str]]:
    return {m: imports(m, p, module_level) for m, p in MODULES.items()}


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if module in names or any(n != "sparseyolo" and module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                return path[path.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_package_is_read():
    assert {"sparseyolo.sparse.tensor", "sparseyolo.nn.sparse_head", "sparseyolo.yolo.api"} <= set(MODULES)
    assert "sparseyolo.sparse.functional" in graph()["sparseyolo.sparse.modules"]


def test_no_import_circles():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_circles_hidden_inside_functions():
    g = graph(module_level=False)
    cycle = find_cycle({m: {t for t in ts if (m, t) not in KNOWN_CIRCLES} for m, ts in g.items()})
    assert cycle is None, "import circle (through an import inside a function): " + " -> ".join(cycle)


def test_module_level_imports_point_down():
    up = [f"{m} -> {t}" for m, ts in graph().items() for t in sorted(ts) if layer(t) > layer(m)]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_imports_inside_functions_point_down_too():
    up = [
        f"{m} -> {t}"
        for m, ts in graph(module_level=False).items()
        for t in sorted(ts)
        if layer(t) > layer(m) and (m, t) not in UPWARD_FACADES
    ]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("sparseyolo.sparse.tensor") < layer("sparseyolo.nn.finder") < layer("sparseyolo.yolo.api")
