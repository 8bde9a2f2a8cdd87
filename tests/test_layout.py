"""The package's layout follows the pipeline: imports point only downward, and no module imports itself back.

config -> data (and task files) -> model + method -> run directory -> data checks -> trainer / evaluation -> card
-> commands over a finished run -> pipeline -> commands. Every import counts, those inside functions too: a lazy import that goes upward is still a dependency
that goes upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunelab"

LAYERS = [
    {"errors", "render", "records", "chat_templates"},
    {"config"},
    {"kinds"},
    {"distributed"},
    {"tasks"},
    {"data"},
    {"models", "methods"},
    {"runs"},
    {"data_checks"},
    {"train", "eval"},
    {"card", "resolve"},
    {"run_commands"},
    {"pipeline"},
    {"compare", "demo", "serve", "export", "sweep"},
    {"ui"},
    {"cli", "__main__"},
]
"""Top-level modules and sub-packages, lowest first; a module may import its own layer and those below."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The tunelab modules `module` imports; `from package import submodule` counts as importing the submodule."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tunelab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found |= submodules or {node.module}
            if len(submodules) < len(node.names):
                found.add(node.module)
    return found - {module}


def _layer(module: str) -> int:
    top = module.split(".")[1] if module != "tunelab" else "__init__"
    return next((i for i, layer in enumerate(LAYERS) if top in layer), -1)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "tunelab" and _layer(m) < 0] == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "tunelab"))
def test_imports_point_only_downward(module):
    upward = sorted(imported for imported in _imports(module) if _layer(imported) > _layer(module))
    assert upward == [], f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_no_import_cycles():
    graph = {module: _imports(module) & MODULES.keys() for module in MODULES}
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing_to_change(command):
    """The linter and formatter settings in pyproject.toml (PEFT's line length and rule families) hold everywhere."""
    root = PACKAGE.parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "src", "tests", "bench"], cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
