from __future__ import annotations

import pytest

from tokencompose.tasks.shards.patterns import expand_shards


@pytest.fixture
def shard_dir(tmp_path):
    for name in ("shard-000001.tar", "shard-000000.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_globs_and_brace_ranges_give_the_same_sorted_files(shard_dir):
    expected = [str(shard_dir / "shard-000000.tar"), str(shard_dir / "shard-000001.tar")]
    assert expand_shards([str(shard_dir / "shard-*.tar")]) == expected
    assert expand_shards([str(shard_dir / "shard-{000000..000001}.tar")]) == expected
    assert expand_shards([str(shard_dir / "shard-000001.tar"), str(shard_dir / "shard-*.tar")]) == expected


@pytest.mark.parametrize("pattern, message", [("nothing-*.tar", "no shard matches"),
                                              ("shard-{000000..000002}.tar", "shard-000002.tar' does not exist")])
def test_a_part_naming_no_file_is_named(shard_dir, pattern, message):
    with pytest.raises(FileNotFoundError, match=message):
        expand_shards([str(shard_dir / pattern)])
