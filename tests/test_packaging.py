"""The package is the folder tokencompose/ (flows, tasks, schemas and data linked from the top level): the
wheel holds every package folder of that tree with all its modules and data files, and the wheel and the
editable install both give `tokencompose.*` and nothing else (no `tests`, `bench`, top-level `flows`, ...)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tokencompose"
TOP_LEVEL_NAMES = ("flows", "tasks", "schemas", "data", "viewer", "cli", "tests", "bench")
# Prints where each of those names would be imported from (a dependency may ship its own `tests`).
FIND_TOP_LEVEL = ("import importlib.util as u, json; print(json.dumps({n: list(getattr(u.find_spec(n), "
                  "'submodule_search_locations', None) or []) for n in %r if u.find_spec(n)}))" % (TOP_LEVEL_NAMES,))


def _inside(found: dict, folder: Path) -> dict:
    """The names that would be imported from ``folder/<name>``."""
    return {name: paths for name, paths in found.items() if str(folder / name) in paths}


def checkout_copy(into: Path) -> Path:
    """The checkout's files as git sees them (tracked, and new ones not ignored), links kept. setuptools reuses
    a build/ folder it finds, so a wheel built in the checkout itself can hold modules deleted or left out since."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        source, target = REPO / name, into / name
        if source.is_symlink() or source.is_file():  # not a file deleted from the tree but still in the index
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                target.symlink_to(os.readlink(source))
            else:
                shutil.copy2(source, target)
    return into


def build_wheel(source: Path, into: Path) -> Path:
    # No build isolation: the project venv's setuptools builds it, so the test needs no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(into),
                    str(source)], check=True, capture_output=True, timeout=300)
    return next(into.glob("tokencompose-*.whl"))


def package_tree(package: Path) -> tuple[set[Path], set[str]]:
    """The folders under ``package`` (links followed) that hold Python modules, and every file of the tree
    (relative to the package's parent, as a wheel names them), build caches left out."""
    folders, files = set(), set()
    for folder, subfolders, names in os.walk(package, followlinks=True):
        subfolders[:] = [name for name in subfolders if name != "__pycache__"]
        if any(name.endswith(".py") for name in names):
            folders.add(Path(folder))
        files.update(Path(folder, name).relative_to(package.parent).as_posix() for name in names
                     if not name.endswith(".pyc"))
    return folders, files


def wheel_violations(package: Path, wheel_names: list[str]) -> list[str]:
    """What the wheel lacks of the tree under ``package``, and what it holds that no user should import."""
    folders, files = package_tree(package)
    problems = [f"{folder.relative_to(package.parent)}/ holds modules but no __init__.py" for folder in sorted(folders)
                if not (folder / "__init__.py").exists()]
    problems += [f"{name} is missing from the wheel" for name in sorted(files - set(wheel_names))]
    name = package.name
    problems += [f"{entry} is in the wheel" for entry in wheel_names
                 if entry.split("/")[0] != name and ".dist-info/" not in entry
                 or entry.split("/")[:2] in ([name, "tests"], [name, "bench"])]
    return problems


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return checkout_copy(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory) -> Path:
    """The project's wheel, built once for this module's tests from a clean copy of the checkout."""
    return build_wheel(checkout, tmp_path_factory.mktemp("dist"))


def test_the_wheel_holds_every_package_folder_module_and_data_file_of_the_tree(checkout, wheel):
    names = zipfile.ZipFile(wheel).namelist()
    package = checkout / "tokencompose"
    assert wheel_violations(package, names) == []
    folders, _ = package_tree(package)
    # The walk really went through the linked top-level folders and found the package data.
    assert {package / "flows", package / "tasks" / "shards", package / "schemas", package / "data"} <= folders
    for data_file in ("tokencompose/data/hypernyms.csv", "tokencompose/data/sample/images", "tokencompose/data/multigen/",
                      "tokencompose/viewer/static/", "tokencompose/viewer/templates/", "tokencompose/py.typed"):
        assert any(name.startswith(data_file) for name in names), data_file


def test_the_wheel_check_names_a_folder_left_out(tmp_path):
    """A folder of modules without __init__.py (an implicit namespace package, which some tools skip), and a
    wheel that lacks a module and a data file and carries tests: each is named."""
    package = tmp_path / "tokencompose"
    (package / "stage").mkdir(parents=True)
    (package / "data").mkdir()
    for name in ("__init__.py", "stage/step.py", "data/__init__.py", "data/table.csv"):
        (package / name).write_text("")
    wheel_names = ["tokencompose/__init__.py", "tokencompose/data/__init__.py", "tokencompose/tests/test_x.py",
                   "tests/test_y.py", "tokencompose-0.1.dist-info/METADATA"]
    assert wheel_violations(package, wheel_names) == [
        "tokencompose/stage/ holds modules but no __init__.py",
        "tokencompose/data/table.csv is missing from the wheel",
        "tokencompose/stage/step.py is missing from the wheel",
        "tokencompose/tests/test_x.py is in the wheel",
        "tests/test_y.py is in the wheel",
    ]


@pytest.mark.slow
def test_the_wheel_installs_only_tokencompose_and_builds_the_demo(prefect_api, wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"tokencompose", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for expected in ("tokencompose/flows/build.py", "tokencompose/tasks/training/trainer.py",
                     "tokencompose/data/sample/captions.json", "tokencompose/viewer/templates/base.html",
                     "tokencompose/cli/__init__.py", "tokencompose/__main__.py"):
        assert expected in names

    # A fresh virtualenv outside the repository; its dependencies come from the project's venv
    # through a .pth line (a path entry: the project's editable-install hook there is not run).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    installed = sorted(p.name for p in Path(site).iterdir() if not p.name.endswith((".pth", ".dist-info")))
    assert installed == ["tokencompose"] or installed == ["__pycache__", "tokencompose"]

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run([str(python), "-c", "import tokencompose.flows.build as b; print(b.__file__); "
                            + FIND_TOP_LEVEL], cwd=workdir, check=True, capture_output=True, text=True).stdout.splitlines()
    assert where[0].startswith(site)
    assert _inside(json.loads(where[1]), Path(site)) == {} and _inside(json.loads(where[1]), REPO) == {}

    from prefect.settings import PREFECT_API_URL

    # The flow reports to the session's test API, so the installed CLI starts no Prefect server of its own.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    run = subprocess.run([str(venv / "bin" / "tokencompose"), "build", "--demo", "--out", str(workdir / "demo")],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((workdir / "demo" / "sizes.json").read_text()) == {"shard-000000.tar": 8}


def test_the_editable_install_maps_the_top_level_folders(tmp_path):
    probe = ("import tokencompose, tokencompose.flows, tokencompose.tasks.training, tokencompose.viewer; "
             "print(tokencompose.flows.__file__); print(tokencompose.tasks.training.__file__); " + FIND_TOP_LEVEL)
    lines = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    # Imported through the package folder's links, from the card's top-level files.
    assert lines[0] == str(PACKAGE / "flows" / "__init__.py")
    assert Path(lines[0]).resolve() == REPO / "flows" / "__init__.py"
    assert Path(lines[1]).resolve() == REPO / "tasks" / "training" / "__init__.py"
    assert _inside(json.loads(lines[2]), REPO) == {}
    hidden = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                             "print([n for n in ('tokencompose.tests', 'tokencompose.bench') if u.find_spec(n)])"],
                            cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    assert hidden == "[]"
