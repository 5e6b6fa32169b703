"""The repository's top level is the package: a wheel and the editable install both give `tokencompose.*`
and nothing else at the top level of a user's environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_NAMES = ("flows", "tasks", "schemas", "data", "viewer", "cli", "tests", "bench")
# Prints where each of those names would be imported from (a dependency may ship its own `tests`).
FIND_TOP_LEVEL = ("import importlib.util as u, json; print(json.dumps({n: list(getattr(u.find_spec(n), "
                  "'submodule_search_locations', None) or []) for n in %r if u.find_spec(n)}))" % (TOP_LEVEL_NAMES,))


def _inside(found: dict, folder: Path) -> dict:
    """The names that would be imported from ``folder/<name>``."""
    return {name: paths for name, paths in found.items() if str(folder / name) in paths}


def _build_wheel(into: Path) -> Path:
    # No build isolation: the project venv's setuptools builds it, so the test needs no download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(into),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    return next(into.glob("tokencompose-*.whl"))


def test_the_wheel_installs_only_tokencompose_and_builds_the_demo(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
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

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    run = subprocess.run([str(venv / "bin" / "tokencompose"), "build", "--demo", "--out", str(workdir / "demo")],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((workdir / "demo" / "sizes.json").read_text()) == {"shard-000000.tar": 8}


def test_the_editable_install_maps_the_top_level_folders(tmp_path):
    probe = ("import tokencompose, tokencompose.flows, tokencompose.tasks.training, tokencompose.viewer; "
             "print(tokencompose.flows.__file__); print(tokencompose.tasks.training.__file__); " + FIND_TOP_LEVEL)
    lines = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert lines[0] == str(REPO / "flows" / "__init__.py")
    assert lines[1] == str(REPO / "tasks" / "training" / "__init__.py")
    assert _inside(json.loads(lines[2]), REPO) == {}
