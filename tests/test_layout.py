"""The code's layout holds: imports run one way (the import-linter contract in pyproject.toml) and no module
imports itself back through others (an import circle)."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_imports_keep_the_layers_contract():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 kept, 0 broken" in result.stdout


def find_circle(graph) -> list[str] | None:
    """A chain of imports that leads back to its start, or None (type-checking imports left out)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return path[path.index(imported) :] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("tlq", exclude_type_checking_imports=True)
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_the_circle_finder_finds_a_circle():
    class Graph:
        modules = {"a", "b", "c"}

        def find_modules_directly_imported_by(self, module):
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}}[module]

    assert find_circle(Graph()) == ["a", "b", "c", "a"]


MAX_MODULE_LINES = 400


def test_no_module_is_over_the_line_limit():
    package = ROOT / "tlq"
    migrations = package / "db" / "migrations"
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(package.rglob("*.py"))
        if migrations not in path.parents
    }
    assert sizes, "no modules found under tlq/"
    over = [f"{name} ({lines} lines)" for name, lines in sizes.items() if lines > MAX_MODULE_LINES]
    assert not over, f"modules over {MAX_MODULE_LINES} lines; split them: " + ", ".join(over)


def test_the_plugin_api_imports_without_torch():
    modules = "task, backbone, context, params, artifacts, registry"
    code = f"import sys; from tlq.plugins import {modules}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
