"""A failing shard under a real Prefect API: only transient errors are retried, and a failed run
still writes the report of what it finished, without marking the dataset complete."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.support.testkit import demo_config
from tokencompose.flows.build import build_grounded_coco
from tokencompose.schemas.reports import IncompleteRun
from tokencompose.tasks.models import backends as backend_registry
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.finalize import BuildFailed
from tokencompose.tasks.grounding.coco import BUNDLED_NOUN_TABLE, CocoAnnotationGrounder

FAILING_IMAGE = 285  # in the second shard of the sample with shard_size 2
ERRORS = {"ValueError": ValueError, "OSError": OSError}


class TriggeredGrounder(CocoAnnotationGrounder):
    """The real COCO grounder, except for FAILING_IMAGE while a file 'trigger' lies beside the noun
    table: it names the error to raise ('OSError once' raises it the first time only). Every attempt
    on FAILING_IMAGE is counted in the file 'attempts'."""

    def __init__(self, noun_table):
        super().__init__(noun_table)
        self.trigger = noun_table.parent / "trigger"
        self.attempts = noun_table.parent / "attempts"

    def ground(self, images, records, nouns):
        if any(r.image_id == FAILING_IMAGE for r in records):
            with open(self.attempts, "a") as handle:
                handle.write("attempt\n")
            if self.trigger.exists():
                name, _, once = self.trigger.read_text().partition(" ")
                if once:
                    self.trigger.unlink()
                raise ERRORS[name](f"injected failure for image {FAILING_IMAGE}")
        return super().ground(images, records, nouns)


@pytest.fixture
def triggered(monkeypatch, tmp_path):
    """A configuration whose grounder fails on demand; its own noun table copy keeps its loaded
    backends apart from other tests' (backends are cached per configuration)."""
    monkeypatch.setitem(backend_registry.GROUNDING_BACKENDS, "triggered",
                        backend_registry.BackendSpec(lambda config: TriggeredGrounder(config.grounding.noun_table)))
    folder = tmp_path / "grounder"
    folder.mkdir()
    table = folder / BUNDLED_NOUN_TABLE.name
    shutil.copy(BUNDLED_NOUN_TABLE, table)

    def make(out: str, error: str | None):
        if error:
            (folder / "trigger").write_text(error)
        return demo_config(tmp_path / out, output={"shard_size": 2},
                           grounding={"backend": "triggered", "noun_table": str(table)})
    make.folder = folder
    return make


def _run_counts(flow_run_id) -> dict[str, int]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.run_count for run in runs}


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".cache" not in p.parts and p.name != "config.json"}


@pytest.mark.server
def test_a_deterministic_error_is_not_retried_and_the_done_shards_are_reported(prefect_api, triggered, tmp_path):
    config = triggered("out", error="ValueError")
    state = build_grounded_coco(config=config, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BuildFailed) and "shard-000001.tar: ValueError: injected failure" in str(error)
    assert _run_counts(state.state_details.flow_run_id) == {"shard-000000": 1, "shard-000001": 1}
    assert (triggered.folder / "attempts").read_text().count("attempt") == 1

    out = config.output.out_dir
    report = IncompleteRun.model_validate_json((out / "incomplete.json").read_bytes())
    assert report.shards_done == ["shard-000000.tar"]
    assert report.shards_failed == {"shard-000001.tar": f"ValueError: injected failure for image {FAILING_IMAGE}"}
    assert report.shards_not_built == ["shard-000002.tar", "shard-000003.tar"]
    sizes = json.loads((out / "sizes.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    assert sizes == {"shard-000000.tar": 2} and stats["samples"] == 2
    assert (stats["status"], stats["shards_done"], stats["shards_planned"]) == ("incomplete", 1, 4)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["not_in_source"]
    assert not (out / "manifest.json").exists(), "an incomplete dataset is never marked complete"

    # The cause gone, the same configuration finishes the dataset and reuses the finished shard.
    (triggered.folder / "trigger").unlink()
    first_shard = out / "shards" / "shard-000000.tar"
    stamp = first_shard.stat().st_mtime_ns
    build_grounded_coco(config=config)
    assert first_shard.stat().st_mtime_ns == stamp
    assert (out / "manifest.json").exists() and not (out / "incomplete.json").exists()
    assert "status" not in json.loads((out / "stats.json").read_text())
    build_directly(triggered("straight", error=None))
    assert _files(out) == _files(tmp_path / "straight")


@pytest.mark.server
def test_an_os_error_is_retried(prefect_api, triggered):
    config = triggered("out", error="OSError once")
    state = build_grounded_coco(config=config, return_state=True)
    assert state.is_completed()
    assert _run_counts(state.state_details.flow_run_id)["shard-000001"] == 2
    assert (triggered.folder / "attempts").read_text().count("attempt") == 2
    assert (config.output.out_dir / "manifest.json").exists()


@pytest.mark.slow
def test_the_cli_exits_non_zero_and_leaves_the_report_when_a_shard_cannot_be_written(tmp_path):
    config = demo_config(tmp_path / "out", output={"shard_size": 2})
    build_directly(config)
    out = config.output.out_dir
    # As after an interrupted first run (no manifest: every shard is planned again; a complete
    # dataset only grows, see test_incremental_build.py) ...
    (out / "manifest.json").unlink()
    # ... with a real I/O failure: the second shard's index cannot replace a folder of the same name.
    (out / "index" / "shard-000001.json").unlink()
    (out / "index" / "shard-000001.json").mkdir()
    settings = tmp_path / "config.json"
    settings.write_text(config.model_dump_json())
    command = os.path.join(os.path.dirname(sys.executable), "tokencompose")  # the installed console script
    result = subprocess.run([command, "build", "--no-prefect", "--config", str(settings)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode != 0
    assert "build failed: " in result.stderr and "IsADirectoryError" in result.stderr
    report = IncompleteRun.model_validate_json((out / "incomplete.json").read_bytes())
    assert report.shards_done == ["shard-000000.tar"] and list(report.shards_failed) == ["shard-000001.tar"]
    assert not (out / "manifest.json").exists()


def test_a_failed_incremental_build_keeps_the_previous_version(tmp_path):
    """Shards of a new version fail: the manifest of the version before stays (its shards are intact),
    incomplete.json names the new shards; the same command once the problem is gone finishes."""
    from tokencompose.data import SAMPLE_DIR
    from tokencompose.tasks.shards.versions import dataset_versions

    lines = (SAMPLE_DIR / "vsr_train.jsonl").read_text().splitlines(keepends=True)
    vsr = tmp_path / "vsr_train.jsonl"
    vsr.write_text("".join(lines[:4]))
    config = demo_config(tmp_path / "out", selection={"vsr_files": [str(vsr)]}, output={"shard_size": 2})
    out = config.output.out_dir
    build_directly(config)
    manifest = (out / "manifest.json").read_bytes()
    vsr.write_text("".join(lines))
    (out / "index" / "shard-000002.json").mkdir()
    with pytest.raises(BuildFailed, match="shard-000002.tar"):
        build_directly(config)
    assert (out / "manifest.json").read_bytes() == manifest and len(dataset_versions(out)) == 1
    report = IncompleteRun.model_validate_json((out / "incomplete.json").read_bytes())
    assert list(report.shards_failed) == ["shard-000002.tar"] and report.shards_not_built == ["shard-000003.tar"]
    (out / "index" / "shard-000002.json").rmdir()
    build_directly(config)
    assert [v.version for v in dataset_versions(out)] == [1, 2] and not (out / "incomplete.json").exists()
