"""One writer per output folder: a second `tokencompose build` on a folder another build holds stops
with exit code 2 and says who holds it; the first one finishes with the right bytes; the lock a killed
run leaves behind does not block the next run. Real processes hold the locks and run the CLI builds; every
wait is on a condition.
A build with Prefect reports to the session's test API (``prefect_api``): it starts no server of its own."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.testkit import demo_config
from tokencompose.data.replicate import replicate_sample
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import LOCK_FILE
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import read_lock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from pathlib import Path
from tokencompose.tasks.shards.output import output_lock
with output_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def _cli(*args, **kwargs):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    return subprocess.Popen([sys.executable, "-m", "tokencompose", "build", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def _wait_for(condition, what: str, deadline_s: float = 300):
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.01)


def _holder(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_build_on_a_held_folder_stops_with_exit_2(prefect_api, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        lock = read_lock(out)
        assert lock["pid"] == holder.pid and lock["host"] and lock["started"]
        for extra in ([], ["--no-prefect"]):
            second = _cli("--demo", "--out", out, *extra)
            _, err = second.communicate(timeout=300)
            assert second.returncode == 2, err
            assert f"is being written by another build (pid {holder.pid} on" in err
        assert not (out / "shards").exists() and not (out / "config.json").exists(), "the second run wrote nothing"
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        holder.wait(timeout=60)
    build_directly(demo_config(out))  # the released folder takes the next build
    build_directly(demo_config(tmp_path / "reference"))
    assert _shards(out) == _shards(tmp_path / "reference")


def test_a_held_folder_is_named_busy_whatever_partial_files_it_holds(tmp_path):
    """The preflight asks the lock before it judges the folder's contents: a build that is writing it has left
    partial files (here a stray temporary), which are no dataset yet."""
    from tokencompose.tasks.models.preflight import build_problems

    out = tmp_path / "out"
    holder = _holder(out)
    try:
        (out / ".config.json.tmp").write_text("{")
        problems = build_problems(demo_config(out))
        assert len([p for p in problems if f"is being written by another build (pid {holder.pid} on" in p]) == 1
        assert not [p for p in problems if "is not empty" in p]
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        holder.wait(timeout=60)
    assert [p for p in build_problems(demo_config(out)) if "is not empty and holds no tokencompose dataset" in p]


def test_two_concurrent_cli_builds_one_waits_out_none_corrupts(prefect_api, tmp_path):
    """The first CLI is paused (SIGSTOP) once its lock is visible, so the second runs while the first
    deterministically holds the folder; then the first goes on and finishes."""
    source = replicate_sample(tmp_path / "source", copies=2)
    settings = {"source": source, "output": {"out_dir": str(tmp_path / "out"), "shard_size": 2}}
    config_file = tmp_path / "config.json"
    config_file.write_text(BuildConfig.model_validate(settings).model_dump_json())
    out = tmp_path / "out"
    first = _cli("--config", config_file, "--no-prefect", start_new_session=True)
    try:
        _wait_for(lambda: (read_lock(out) or {}).get("pid") == first.pid or first.poll() is not None,
                  "the first build takes the lock")
        assert first.poll() is None, "the first build finished before it could be paused"
        os.killpg(first.pid, signal.SIGSTOP)
        second = _cli("--config", config_file)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"pid {first.pid}" in err and "wait for it to finish" in err
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    reference = {**settings, "output": {**settings["output"], "out_dir": str(tmp_path / "reference")}}
    build_directly(BuildConfig.model_validate(reference))
    assert _shards(out) == _shards(tmp_path / "reference") and len(_shards(out)) > 1
    assert not list((out / "shards").glob(".*.tmp")), "no temporaries left"


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    stale = read_lock(out)
    assert stale["pid"] == holder.pid, "the killed run's details are still in the lock file"
    run = _cli("--demo", "--out", out, "--no-prefect")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert (out / "manifest.json").is_file() and (out / LOCK_FILE).read_text() == ""
