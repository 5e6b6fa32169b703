"""The package's boundaries as tools see them: prefect.yaml's entrypoints load the package's own flow objects
without touching sys.path, and no module of the package imports itself back through others (no cycles)."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHECKOUT_NAMES = ("flows", "tasks", "schemas", "data", "cli", "viewer")

# Run in a fresh interpreter in the repository root, as a worker runs a deployment there. Each argument is a
# JSON list of entrypoints; per list it prints what loading them did.
LOAD_LIKE_PREFECT = """
import importlib, json, sys
from prefect.flows import load_flow_from_entrypoint


def package_module(module):
    if module.endswith(".py"):  # the file form names the file: flows/build.py
        return "tokencompose.flows." + module.rsplit("/", 1)[-1].removesuffix(".py")
    return module


for group in sys.argv[1:]:
    path_before, report = list(sys.path), {}
    for entrypoint in json.loads(group):
        flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        module, name = entrypoint.split(":")
        report[entrypoint] = flow is getattr(importlib.import_module(package_module(module)), name, None)
    print(json.dumps({"same_object": report, "sys_path_added": [p for p in sys.path if p not in path_before],
                      "checkout_modules": sorted(n for n in %r if n in sys.modules)}))
""" % (CHECKOUT_NAMES,)


def load_like_prefect(*groups: list[str]) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    run = subprocess.run([sys.executable, "-c", LOAD_LIKE_PREFECT, *map(json.dumps, groups)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_each_deployment_loads_the_package_flow_object_and_leaves_sys_path_alone():
    entrypoints = [d["entrypoint"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]]
    assert entrypoints and all(e.startswith("tokencompose.flows.") for e in entrypoints), entrypoints
    # The old file form is loaded after them, in the same interpreter: the probe sees what it does.
    deployments, file_form = load_like_prefect(entrypoints, ["flows/build.py:build_grounded_coco"])
    assert deployments == {"same_object": dict.fromkeys(entrypoints, True), "sys_path_added": [],
                           "checkout_modules": []}
    assert file_form["same_object"] == {"flows/build.py:build_grounded_coco": False}
    assert str(REPO) in file_form["sys_path_added"]


# --- import cycles ---------------------------------------------------------------------------------------------

def package_modules(package: str) -> dict[str, Path]:
    """Every module of the importable ``package`` (links followed), by dotted name."""
    root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    modules = {}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        parts = [package, *Path(folder).relative_to(root).parts]
        for name in names:
            if name.endswith(".py"):
                stem = name.removesuffix(".py")
                modules[".".join(parts if stem == "__init__" else [*parts, stem])] = Path(folder, name)
    return modules


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file (module level or inside functions);
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[:len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return (found & known) - {module}


def import_graph(package: str) -> dict[str, set[str]]:
    modules = package_modules(package)
    return {module: imported_modules(module, path, set(modules)) for module, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as the path back to its start."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group, member = set(), None
            while member != node:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_shortest_cycle(graph, min(group), group) for group in groups)


def _shortest_cycle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & group):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                paths.append([*path, target])
    raise AssertionError(f"{start} is in no cycle")


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph("tokencompose")
    # The walk went through the linked folders and found the flows' imports of the tasks.
    assert {module.split(".")[1] for module in graph if module.count(".")} >= set(CHECKOUT_NAMES)
    assert any(target.startswith("tokencompose.tasks.") for target in graph["tokencompose.flows.build"])
    cycles = import_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_names_every_cycle(tmp_path):
    package = tmp_path / "loopy"
    (package / "stage").mkdir(parents=True)
    sources = {"__init__.py": "", "stage/__init__.py": "",
               "stage/a.py": "from loopy.stage import b\n",
               "stage/b.py": "def late():\n    from loopy.stage.c import thing\n",
               "stage/c.py": "import loopy.stage.a\nthing = 1\n",
               "d.py": "from .e import value\n", "e.py": "from . import d\nvalue = 2\n",
               "f.py": "import loopy.stage.a\n"}
    for name, text in sources.items():
        (package / name).write_text(text)
    sys.path.insert(0, str(tmp_path))
    try:
        cycles = import_cycles(import_graph("loopy"))
    finally:
        sys.path.remove(str(tmp_path))
    assert cycles == [["loopy.d", "loopy.e", "loopy.d"],
                      ["loopy.stage.a", "loopy.stage.b", "loopy.stage.c", "loopy.stage.a"]]
