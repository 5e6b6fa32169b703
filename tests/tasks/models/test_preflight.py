"""An output folder that cannot be written stops build, train and evaluate in preflight: one line,
exit 2, a fraction of a second of work and nothing heavy imported.

These tests run as root here, and root ignores permission bits: a folder chmod-ed read-only is still
writable for root. So the unwritable outputs are ones root cannot get around either: a path whose
parent is a regular file (no one can make a folder inside a file), ``/sys`` (sysfs refuses new
files and folders even to root), and a chmod-ed folder checked by a process that has dropped root.
The check itself tries to write (a probe file or folder), so a read-only mount answers the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.cli_probe import run_cli
from tokencompose.tasks.models.preflight import output_problems


def test_a_folder_inside_a_file_cannot_be_made(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert output_problems(a_file / "out" / "deeper", "out") == [
        f"out: {a_file / 'out' / 'deeper'} cannot be made: {a_file} is not a folder"]
    assert output_problems(a_file, "out") == [f"out: {a_file} exists and is not a folder"]


def test_a_folder_root_cannot_write_is_named():
    assert output_problems(Path("/sys"), "out") == ["out: /sys is not writable (permission denied)"]
    (line,) = output_problems(Path("/sys/tokencompose-out"), "out")
    assert line.startswith("out: /sys/tokencompose-out cannot be made in /sys (")


def test_a_writable_folder_passes_and_keeps_nothing_of_the_probe(tmp_path):
    assert output_problems(tmp_path, "out") == [] and list(tmp_path.iterdir()) == []
    assert output_problems(tmp_path / "new" / "run", "out") == [] and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_a_read_only_folder_is_named_for_a_user_without_root():
    """chmod 0o555 binds every user but root, so the check runs in a process that dropped to nobody
    when the test runs as root (in a world-readable folder, since pytest's tmp folders are 0o700)."""
    base = Path(tempfile.mkdtemp(prefix="tokencompose-readonly-"))
    try:
        base.chmod(0o755)
        read_only = base / "read-only"
        read_only.mkdir(mode=0o555)
        read_only.chmod(0o555)
        # the interpreter lives under /root here, so the process starts as root and drops to nobody
        # once everything is imported
        code = ("import json, os, sys; from pathlib import Path; from tokencompose.tasks.models.preflight import "
                "output_problems as p\n"
                "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
                "print(json.dumps([p(Path(sys.argv[1]), 'out'), p(Path(sys.argv[1]) / 'run', 'out')]))")
        done = subprocess.run([sys.executable, "-c", code, str(read_only)], capture_output=True, text=True,
                              timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == [[f"out: {read_only} is not writable (permission denied)"],
                                           [f"out: {read_only / 'run'} cannot be made in {read_only} "
                                            f"(permission denied)"]]
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("command", ["build", "train", "evaluate"])
def test_each_command_stops_in_preflight_with_one_line(command, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = a_file / "out"
    argv = {"build": ["build", "--demo", "--out", str(out)],
            "train": ["train", "--demo", "--output-dir", str(out)],
            "evaluate": ["evaluate", "--out-dir", str(out), "--pipelines", str(tmp_path / "sd")]}[command]
    result = run_cli(*argv)
    field = {"build": "output.out_dir", "train": "output_dir", "evaluate": "out_dir"}[command]
    problem = f"{field}: {out} cannot be made: {a_file} is not a folder"
    assert result["code"] == 2 and problem in result["stderr"].splitlines()[-1], result["stderr"]
    assert result["stderr"].count(str(out)) == 1 and "Traceback" not in result["stderr"]
    assert result["heavy"] == [] and result["cpu"] < 2.0, result
