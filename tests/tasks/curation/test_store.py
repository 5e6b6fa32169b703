"""flags.jsonl and views.jsonl under several writers at once, and what the build and training read of them."""
from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from tokencompose.schemas.curation import (FLAGS_FILE, CurationFileError, Flag, flagged_samples_digest,
                                           read_exclusions, read_records)
from tokencompose.tasks.curation.store import FlagStore, ViewStore

WRITERS, FLAGS_EACH = 4, 10


def flag_many(folder: str, writer: int, start: multiprocessing.synchronize.Event) -> None:
    """One viewer process: waits for the others, then flags its own samples and masks one by one."""
    store = FlagStore(Path(folder))
    start.wait(timeout=60)
    for i in range(FLAGS_EACH):
        key = f"{writer:06d}{i:06d}"
        store.flag(key, f"writer {writer} sample {i}")
        store.flag(key, f"writer {writer} mask {i}", noun=i % 3, noun_text="cup")
        if i % 5 == 4:
            store.unflag(key)  # every fifth sample flag is taken back again


def test_concurrent_viewer_processes_lose_no_flag(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=flag_many, args=(str(tmp_path), w, start)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    flags = FlagStore(tmp_path).read()
    expected = set()
    for writer in range(WRITERS):
        for i in range(FLAGS_EACH):
            key = f"{writer:06d}{i:06d}"
            expected.add((key, i % 3, f"writer {writer} mask {i}"))
            if i % 5 != 4:
                expected.add((key, None, f"writer {writer} sample {i}"))
    assert {(f.key, f.noun, f.reason) for f in flags} == expected
    assert len(flags) == len(expected)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_concurrent_threads_and_views(tmp_path):
    views = ViewStore(tmp_path)
    threads = [threading.Thread(target=lambda n=n: views.save(f"view-{n}", {"q": str(n)})) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(v.name for v in views.read()) == sorted(f"view-{n}" for n in range(12))
    assert views.get("view-7").filters == {"q": "7"}


def test_a_bad_file_stops_a_change_and_stays_as_it_was(tmp_path):
    path = tmp_path / FLAGS_FILE
    content = '{"key": "000000000632", "reason": "ok", "flagged_at": "t"}\n\xff\n'
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CurationFileError, match=rf"^{path}:2: not UTF-8 text$"):
        FlagStore(tmp_path).flag("000000000139", "x")
    assert path.read_bytes() == content.encode("latin-1")


def test_exclusions_and_their_digest(tmp_path):
    store = FlagStore(tmp_path)
    store.flag("000000000632", "blurry")
    store.flag("000000000285", "small", noun=0)
    exclusions = read_exclusions(store.path)
    assert exclusions.samples == {"000000000632"} and exclusions.nouns == {("000000000285", 0)}
    digest = flagged_samples_digest(store.path)
    store.flag("000000000632", "another reason")  # same samples excluded: same digest
    store.flag("000000000139", "mask", noun=1)    # a noun flag does not change what a build takes
    assert flagged_samples_digest(store.path) == digest
    store.flag("000000000139", "sample")
    assert flagged_samples_digest(store.path) != digest
    with pytest.raises(CurationFileError, match="no such flags file"):
        read_exclusions(tmp_path / "missing.jsonl")
    assert [f.key for f in read_records(store.path, Flag)] == ["000000000139", "000000000139", "000000000285",
                                                               "000000000632"]
