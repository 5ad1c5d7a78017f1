"""The package's shape: no import cycle, imports run down the layers, no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sgps_hf"
MAX_LINES = 400
#: Bottom to top: a module may import from its own layer and the ones below it.
LAYERS = [
    ["errors", "version"],
    ["imaging", "metrics"],
    ["task_file", "task", "data"],
    ["body"],
    ["hub"],
    ["trust"],
    ["models"],
    ["synthesis"],
    ["training"],
    ["evaluation"],
    ["slides"],
    ["quickstart", "app"],
    ["cli"],
    ["__init__"],
]
#: The one deliberate upward import: the network's thin ``synthesize``/``update`` delegates.
ALLOWED_UPWARD = {
    ("sgps_hf.models.sgps.modeling_sgps", "sgps_hf.synthesis"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "metric_modules" not in path.parts}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere (in functions and TYPE_CHECKING blocks too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "sgps_hf":
                found.add(target)
            elif target == "sgps_hf" and name != "sgps_hf":
                found.add("sgps_hf")
    return found


def unresolved(path: Path, known: set[str]) -> list[str]:
    """Modules of the package that ``path`` imports from but that do not exist (a stale path after a move)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    missing = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sgps_hf")):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base not in known:
                missing.append(f"{name}: {base}")
    return missing


def test_every_import_inside_the_package_resolves():
    known = set(modules())
    assert not [m for path in modules().values() for m in unresolved(path, known)]


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports(path, known) for name, path in modules().items()}


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return next(index for index, members in enumerate(LAYERS) if key in members)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target] if target in stack else [node, target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_imports_run_down_the_layers():
    upward = {(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)}
    assert upward <= ALLOWED_UPWARD, sorted(upward - ALLOWED_UPWARD)


def test_no_module_over_400_lines():
    long = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert not {name: n for name, n in long.items() if n > MAX_LINES}
