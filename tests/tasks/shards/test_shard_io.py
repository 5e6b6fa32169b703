"""The shard byte layout (format 2): plain ustar members, offsets and sha256 taken while writing."""
import hashlib
import io
import json
import tarfile

import pytest

from tests.support.testkit import demo_config
from tokencompose.schemas.reports import FORMAT_VERSION, ShardIndex
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.shards import shard_io
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import shard_is_intact


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = demo_config(tmp_path_factory.mktemp("io") / "out", output={"shard_size": 4})
    build_directly(config)
    return config.output.out_dir


def _walk(data: bytes):
    """(header offset, name, size, type flag) of every member, read straight from the bytes."""
    position, members = 0, []
    while position + 512 <= len(data):
        header = data[position:position + 512]
        if header == bytes(512):
            break
        name = header[:100].rstrip(b"\0").decode()
        size = int(header[124:136].rstrip(b"\0 ").decode(), 8)
        members.append((position, name, size, header[156:157], header[257:263], header))
        position += 512 + (size + 511) // 512 * 512
    return members, position


def test_every_member_has_one_ustar_header_and_the_index_points_at_its_data(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["provenance"]["build"]["format_version"] == 2
    for shard in manifest["shards"]:
        data = (built / "shards" / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        members, end = _walk(data)
        assert [m[3] for m in members] == [b"0"] * len(members), "only regular files: no PAX 'x' or 'g' headers"
        for offset, name, size, _, magic, header in members:
            assert magic == b"ustar\0"
            assert int(header[136:148].rstrip(b"\0 "), 8) == 0, "mtime 0"
            assert int(header[100:108].rstrip(b"\0 "), 8) == 0o644
            assert int(header[108:116].rstrip(b"\0 "), 8) == 0 == int(header[116:124].rstrip(b"\0 "), 8)
            assert header[265:297].strip(b"\0") == b"" == header[297:329].strip(b"\0"), "empty owner names"
        assert data[end:end + 1024] == bytes(1024) and len(data) % tarfile.RECORDSIZE == 0
        index = ShardIndex.model_validate_json((built / shard["index"]).read_bytes())
        from_headers = {}
        for offset, name, size, *_ in members:
            key, _, ext = name.partition(".")
            from_headers.setdefault(key, {})[ext] = (offset + 512, size)
        assert {k: {e: (loc.offset, loc.size) for e, loc in v.items()} for k, v in index.samples.items()} \
            == from_headers
        # Members in the order webdataset's TarWriter wrote them: samples in order, extensions sorted.
        names = [m[1] for m in members]
        by_offset = sorted((loc.offset, f"{k}.{e}") for k, v in index.samples.items() for e, loc in v.items())
        assert names == [name for _, name in by_offset]
        keys = [name.partition(".")[0] for name in names[::2]]
        assert names == [f"{k}.{e}" for k in keys for e in ("jpg", "json")]
        for key, where in index.samples.items():
            json_at = where["json"]
            record = SampleRecord.from_json_bytes(data[json_at.offset:json_at.offset + json_at.size])
            assert record.key == key


def test_python_tarfile_and_stock_webdataset_read_the_shards(built):
    import webdataset as wds

    for path in sorted((built / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            infos = tar.getmembers()
            assert all(not i.pax_headers for i in infos)
            scan = shard_io.scan_members(path)
            assert scan[1] is None
            assert {m.name for m in infos} == {f"{k}.{e}" for k, v in scan[0].items() for e in v}
        samples = list(wds.WebDataset(str(path), shardshuffle=False))
        assert samples and all({"__key__", "jpg", "json"} <= set(s) for s in samples)
        for sample in samples:
            assert SampleRecord.from_json_bytes(sample["json"]).key == sample["__key__"]


def test_ustar_headers_save_a_kibibyte_per_member_against_tarfile_pax(tmp_path):
    payloads = [(f"{i:012d}", {"jpg": bytes(range(256)) * (i + 1), "json": b'{"a":1}'}) for i in range(5)]
    digest, size, _ = shard_io.write_tar(tmp_path / "ours.tar", payloads)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # what format 1 wrote
        for key, members in payloads:
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(members[ext]), 0.0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(members[ext]))
    pax = buffer.getvalue()
    assert size == (tmp_path / "ours.tar").stat().st_size and digest == shard_io.file_sha256(tmp_path / "ours.tar")
    # ten members: ten PAX header+data blocks of 1 KiB fewer (record padding may round either total up)
    members, _ = _walk(pax)
    assert sum(m[3] == b"x" for m in members) == 10
    assert len(pax) - size >= 10 * 1024 - tarfile.RECORDSIZE


def test_intact_check_hashes_in_chunks_and_sees_a_flipped_byte(built, tmp_path):
    import shutil

    from tokencompose.schemas.reports import ShardSummary, ShardStats

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    config = demo_config(copy, output={"shard_size": 4})
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = manifest["shards"][0]
    summary = ShardSummary(shard=shard["name"], sha256=shard["sha256"], bytes=shard["bytes"], samples=shard["samples"],
                           stats=ShardStats(), rejects=[], provenance={})
    assert shard_is_intact(config, summary)
    path = copy / "shards" / shard["name"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert not shard_is_intact(config, summary)
    assert shard_io.file_sha256(path, chunk=7) == hashlib.sha256(bytes(data)).hexdigest()
