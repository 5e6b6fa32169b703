"""The command line sits on top: flows, the viewer, the runners and the tasks never import it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tokencompose

PACKAGE = Path(tokencompose.__file__).parent
BELOW_THE_CLI = ("flows", "viewer", "runners", "tasks", "schemas")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("folder", BELOW_THE_CLI)
def test_no_module_below_the_cli_imports_it(folder):
    offenders = {str(path.relative_to(PACKAGE)): sorted(m for m in _imported_modules(path)
                                                        if m == "tokencompose.cli" or m.startswith("tokencompose.cli."))
                 for path in sorted((PACKAGE / folder).rglob("*.py"))}
    assert not {path: modules for path, modules in offenders.items() if modules}
