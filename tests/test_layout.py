"""The package's layout rules: no import cycle, ``core/`` below everything, no registry importing its
plug-ins, short modules and functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fcpts"
#: Longest module (lines) and function (lines) without a stated reason.
MODULE_LINES, FUNCTION_LINES = 300, 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The fcpts modules ``path`` imports at module level (a package's submodules named in ``from . import``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fcpts"):
            found.add(node.module)  # type: ignore[arg-type]
    return {m for m in found if m in known and m != name}


def test_no_import_cycle() -> None:
    known = modules()
    # Package __init__ files import their plug-ins (that is how they register); leave them out.
    graph = {m: imports(p, known) - {n for n in known if known[n].name == "__init__.py"} for m, p in known.items()}
    graph = {m: deps for m, deps in graph.items() if known[m].name != "__init__.py"}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep in graph.get(m, ()):
            assert state.get(dep) != 1, f"import cycle: {' → '.join([*path, m, dep])}"
            if dep not in state:
                visit(dep, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_core_imports_nothing_above_it() -> None:
    known = modules()
    allowed = ("fcpts.core", "fcpts.errors", "fcpts.registry")
    for name, path in known.items():
        if name.startswith("fcpts.core"):
            above = [m for m in imports(path, known) if not m.startswith(allowed)]
            assert not above, f"{name} imports {above}"


def test_the_method_does_not_import_the_baselines() -> None:
    known = modules()
    for name, path in known.items():
        if name.startswith("fcpts.method"):
            assert not [m for m in imports(path, known) if m.startswith("fcpts.baselines")], name


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_are_short(name: str) -> None:
    path = modules()[name]
    text = path.read_text()
    tree = ast.parse(text)
    docstring = ast.get_docstring(tree) or ""
    if len(text.splitlines()) > MODULE_LINES:
        assert "lines" in docstring.lower(), f"{name}: {len(text.splitlines())} lines and no reason in its docstring"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, f"{name}: {', '.join(long)}"
