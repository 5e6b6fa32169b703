"""Each dataset source kind builds a tiny dataset end to end (consensus captions, spaCy nouns, Grounded-SAM
masks from random-weight models): byte-identical twice, with its rejects, viewable, grown incrementally,
and resumed after SIGKILL."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.dataset_sources import dataset_settings, rows, write_source, write_wds
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import ConfigurationError

pytestmark = pytest.mark.paper_size


def _build(dataset: str, out: Path, **sections) -> None:
    build_directly(BuildConfig.model_validate(dataset_settings(dataset, out, **sections)))


def _hashes(out: Path) -> dict[str, str]:
    files = sorted((out / "shards").glob("*.tar")) + [out / "rejects.jsonl"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


IMG2DATASET_FAILED = [{"key": "000000010", "url": "https://example.org/gone.jpg", "status": "failed_to_download",
                       "error_message": "HTTP Error 404: Not Found"},
                      {"key": "000000011", "url": "https://example.org/big.jpg", "status": "failed_to_resize",
                       "error_message": "image too large"}]


def _hostile() -> list[dict]:
    items = rows(7)
    items[1]["image"] = None
    items[2]["caption"] = ["Кошка сидит на столе"]
    items[3]["caption"] = []
    items[4]["url"] = items[0]["url"]
    items[5]["image"] = b"\xff\xd8 not a jpeg"
    return items


@pytest.mark.parametrize("kind", ["hf", "wds", "folder"])
def test_a_dataset_source_builds_the_same_bytes_twice_with_its_rejects(tmp_path, kind):
    from fastapi.testclient import TestClient

    from tokencompose.viewer.app import create_app

    # wds: img2dataset's parquet beside the last tar lists two URLs it could not use
    dataset = write_source(kind, tmp_path, _hostile(), per_tar=3, failed=IMG2DATASET_FAILED)
    # shards of 7 rows: row 4 repeats row 0's URL, and a shard task finds duplicates among its own rows
    _build(dataset, tmp_path / "a", output={"shard_size": 7})
    _build(dataset, tmp_path / "b", output={"shard_size": 7})
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    rejects = [json.loads(line) for line in (tmp_path / "a" / "rejects.jsonl").read_text().splitlines()]
    failed = {7: "download_failed", 8: "download_failed"} if kind == "wds" else {}   # after the last tar's samples
    assert {r["image_id"]: r["reason"] for r in rejects} == {
        1: "no_image", 2: "no_usable_caption", 3: "no_captions", 4: "duplicate_url", 5: "not_an_image", **failed}
    assert "not in the Latin script" in next(r["detail"] for r in rejects if r["image_id"] == 2)
    if kind == "wds":
        gone = next(r for r in rejects if r["image_id"] == 7)
        assert gone["file_name"] == "00002.parquet/000000010" and gone["detail"].endswith(
            "img2dataset failed_to_download: HTTP Error 404: Not Found (url https://example.org/gone.jpg)")
    keys = sorted(key for index in sorted((tmp_path / "a" / "index").glob("*.json"))
                  for key in json.loads(index.read_text())["samples"])
    assert keys == ["000000000000", "000000000006"]  # rows 0 and 6
    with TestClient(create_app(tmp_path / "a")) as client:
        page = client.get(f"/sample/{keys[0]}")
        assert page.status_code == 200 and "riding a horse" in page.text
        record = client.get(f"/sample/{keys[1]}/record.json").json()
        assert (record["width"], record["height"]) == (56, 40)  # the size read from the image itself
        assert client.get(f"/sample/{keys[0]}/image").content == rows(1)[0]["image"]


@pytest.mark.parametrize("kind", ["hf", "wds", "folder"])
def test_a_grown_dataset_source_adds_a_version_with_its_new_rows(tmp_path, kind):
    out = tmp_path / "out"
    _build(write_source(kind, tmp_path / "v1", rows(3), per_tar=3), out)
    first = _hashes(out)
    grown = tmp_path / "v2"
    if kind == "wds":  # img2dataset writes new tars beside the old ones
        write_wds(grown / "wds", rows(3), per_tar=3)
        write_wds(grown / "wds", rows(3, start=3), per_tar=3, first_tar=1)
        dataset = "wds:" + str(grown / "wds" / "*.tar")
    else:
        dataset = write_source(kind, grown, rows(6), per_tar=3)
    _build(dataset, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [v["added"] for v in manifest["versions"]] == [["shard-000000.tar"], ["shard-000001.tar"]]
    assert {k: v for k, v in _hashes(out).items() if k in first and k.endswith(".tar")} == \
        {k: v for k, v in first.items() if k.endswith(".tar")}
    index = json.loads((out / "index" / "shard-000001.json").read_text())
    assert sorted(index["samples"]) == [f"{i:012d}" for i in range(3, 6)]
    # A lost shard is rebuilt from the rows its index names, to the same bytes; a source that lost rows is refused.
    grown_hashes = _hashes(out)
    (out / "shards" / "shard-000000.tar").unlink()
    _build(dataset, out)
    assert _hashes(out) == grown_hashes and len(json.loads((out / "manifest.json").read_text())["versions"]) == 2
    with pytest.raises(ConfigurationError, match="the source has 3 rows, but shards of .* hold rows up to 5"):
        _build(write_source(kind, tmp_path / "v3", rows(3), per_tar=3), out)


@pytest.mark.slow
def test_a_build_killed_midway_finishes_with_the_same_bytes(tmp_path):
    dataset = write_source("folder", tmp_path, rows(9), per_tar=3)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(dataset_settings(dataset, tmp_path / "killed", output={"shard_size": 1})))
    _build(dataset, tmp_path / "whole-1", output={"shard_size": 1})
    command = [os.path.join(os.path.dirname(sys.executable), "tokencompose"), "build", "--no-prefect",
               "--config", str(config_file)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = tmp_path / "killed" / "shards"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(shards.glob("*.tar"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists(), "the build finished before it was killed"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _hashes(tmp_path / "killed") == _hashes(tmp_path / "whole-1")
