"""The build-grounded-coco flow under a real (test-harness) Prefect API."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import httpx
from prefect.settings import PREFECT_API_URL

from tests.support.prefect_processes import flow_run_logs
from tests.support.testkit import demo_config
from tokencompose.data.replicate import replicate_sample
from tokencompose.flows.build import build_grounded_coco
from tokencompose.schemas.config import BuildConfig

pytestmark = pytest.mark.server


def _dataset_bytes(out):
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and ".cache" not in p.parts}
    files.pop("config.json")
    return files


def _latest_artifact(key):
    """The newest artifact with this key, read over the REST API (prefect 3.8.8's client sends
    null fields that its own server rejects for this call)."""
    body = {"sort": "CREATED_DESC", "limit": 200, "offset": 0}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return next(a for a in response.json() if a["key"] == key)


def test_flow_builds_the_sample_with_progress_and_summary(prefect_api, tmp_path):
    state = build_grounded_coco(config=demo_config(tmp_path / "out", output={"shard_size": 3}), return_state=True)
    summary = state.result()
    assert summary["samples written"] == 8 and summary["images rejected"] == 1
    assert summary["rejected: not_in_source"] == 1 and "rejected: no_masks" not in summary
    assert 0 < summary["share of nouns with a mask"] < 1
    assert summary["share of non-stop-list nouns with a mask"] == round(14 / 18, 3)  # issue 13: at least 75%
    assert _latest_artifact("build-grounded-coco-progress")["data"] == 100.0
    table = _latest_artifact("build-grounded-coco-summary")
    assert "samples written" in str(table["data"])
    messages = flow_run_logs(state.state_details.flow_run_id, "build: done,")
    assert "build: 0/8 image" in messages  # the images of the run's shards, before the first one is done
    assert any(re.fullmatch(r"build: done, 8/8 image in .+ \([\d.e+-]+ image/s\)", m) for m in messages), messages


def test_second_run_reuses_shards_and_a_deleted_shard_is_rebuilt(prefect_api, tmp_path):
    config = demo_config(tmp_path / "out", output={"shard_size": 3})
    build_grounded_coco(config=config)
    shards = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    before = _dataset_bytes(tmp_path / "out")
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    build_grounded_coco(config=config)
    assert {p.name: p.stat().st_mtime_ns for p in shards} == stamps, "cached shards are not written again"
    shards[1].unlink()
    build_grounded_coco(config=config)
    assert _dataset_bytes(tmp_path / "out") == before


def test_interrupted_run_resumed_gives_the_same_bytes(prefect_api, tmp_path):
    source = replicate_sample(tmp_path / "source", copies=3)
    settings = {"source": source, "output": {"out_dir": str(tmp_path / "interrupted"), "shard_size": 2}}
    config_file = tmp_path / "config.json"
    config_file.write_text(BuildConfig.model_validate(settings).model_dump_json())
    shards_dir = tmp_path / "interrupted" / "shards"
    # The harness's API (a setting, not in os.environ): the CLI starts no server of its own.
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = os.path.join(os.path.dirname(sys.executable), "tokencompose")  # the installed console script
    process = subprocess.Popen([command, "build", "--config", str(config_file)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(shards_dir.glob("*.tar"))) < 3:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = {p.name: p.stat().st_mtime_ns for p in shards_dir.glob("*.tar")}
    assert 3 <= len(written) < 12, "the kill must land mid-run"
    assert not (tmp_path / "interrupted" / "manifest.json").exists()

    build_grounded_coco(config=BuildConfig.model_validate(settings))
    rewritten = [n for n in written if (shards_dir / n).stat().st_mtime_ns != written[n]]
    # A kill between a tar's rename and Prefect persisting the task's result leaves at most one
    # shard (workers=1) without a cache record: that one is built again, to the same bytes.
    assert len(rewritten) <= 1, f"finished shards must be skipped, rebuilt: {rewritten}"
    uninterrupted = {**settings, "output": {**settings["output"], "out_dir": str(tmp_path / "straight")}}
    build_grounded_coco(config=BuildConfig.model_validate(uninterrupted))
    assert _dataset_bytes(tmp_path / "interrupted") == _dataset_bytes(tmp_path / "straight")
    assert len(list(shards_dir.glob("*.tar"))) == 12


def test_bad_configuration_fails_the_run_before_any_output(prefect_api, tmp_path):
    config = demo_config(tmp_path / "out", source={"images_dir": str(tmp_path / "nowhere")})
    with pytest.raises(Exception, match="nowhere is not a folder"):
        build_grounded_coco(config=config)
    assert not (tmp_path / "out").exists()


def test_parallel_shards_give_the_same_bytes_as_the_direct_build(prefect_api, tmp_path):
    from tokencompose.tasks.shards.dataset import build_directly

    build_grounded_coco(config=demo_config(tmp_path / "parallel", workers=3, output={"shard_size": 2}))
    build_directly(demo_config(tmp_path / "direct", output={"shard_size": 2}))
    assert _dataset_bytes(tmp_path / "parallel") == _dataset_bytes(tmp_path / "direct")


def test_a_cached_rerun_loads_no_backend(prefect_api, tmp_path):
    """Provenance travels in the shard summaries: a run whose shards are all cached (or that has no new
    images) writes its reports without loading a single model, and the manifest's provenance is the
    one in the samples."""
    from tokencompose.tasks.models import backends

    config = demo_config(tmp_path / "out", output={"shard_size": 3})
    out = config.output.out_dir
    build_grounded_coco(config=config)
    manifest = json.loads((out / "manifest.json").read_text())
    backends._loaded.clear()  # as in a new process
    (out / "manifest.json").unlink()  # an unfinished run: every shard is planned again, all cached
    summary = build_grounded_coco(config=config)
    assert backends._loaded == {}, "no backend was loaded for bookkeeping"
    assert json.loads((out / "manifest.json").read_text())["provenance"] == manifest["provenance"]
    assert summary["shards"] == len(manifest["shards"])
    build_grounded_coco(config=config)  # complete: nothing new
    assert backends._loaded == {}
