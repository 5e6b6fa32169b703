"""The whole build without Prefect: bad input end to end, determinism, what is written beside the shards."""
import hashlib
import io
import json
import logging
import re
import tarfile

import pytest
import webdataset as wds
from PIL import Image
from pycocotools import mask as coco_mask

from tests.support.testkit import jpeg_bytes
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import Manifest, ShardIndex
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import ConfigurationError


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


def _samples(out):
    dataset = wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False, empty_check=False)
    return list(dataset)


def test_demo_build_is_readable_by_stock_webdataset(make_demo_config, caplog):
    config = make_demo_config(output={"shard_size": 3})
    with caplog.at_level(logging.INFO, logger="tokencompose.progress"):
        build_directly(config)
    progress = [m for m in caplog.messages if m.startswith("build: ")]
    assert progress[0] == "build: 0/8 image"
    assert re.fullmatch(r"build: done, 8/8 image in .+ \([\d.e+-]+ image/s\)", progress[-1])
    out = config.output.out_dir
    samples = _samples(out)
    manifest = Manifest.model_validate_json((out / "manifest.json").read_bytes())
    assert len(samples) == manifest.samples == 8 and len(manifest.shards) == 3
    for sample in samples:
        assert {k for k in sample if not k.startswith("__")} == {"jpg", "json"}
        record = SampleRecord.from_json_bytes(sample["json"])
        assert record.key == sample["__key__"]
        source = (config.source.images_dir / record.file_name).read_bytes()
        assert sample["jpg"] == source, "the original image bytes, not re-encoded"
        assert Image.open(io.BytesIO(sample["jpg"])).size == (record.width, record.height)
        assert len(record.candidates) == 5 and record.caption in [c.text for c in record.candidates]
        for noun in record.nouns:
            assert record.caption[noun.span[0]:noun.span[1]] == noun.text
            if noun.mask is not None:
                decoded = coco_mask.decode({"size": noun.mask.size, "counts": noun.mask.counts.encode()})
                assert decoded.shape == (record.height, record.width) and decoded.any()
            else:
                assert noun.reason
    for shard in manifest.shards:
        data = (out / "shards" / shard.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256


def test_index_gives_random_access(make_demo_config):
    config = make_demo_config()
    build_directly(config)
    out = config.output.out_dir
    index = ShardIndex.model_validate_json((out / "index" / "shard-000000.json").read_bytes())
    data = (out / "shards" / "shard-000000.tar").read_bytes()
    with tarfile.open(out / "shards" / "shard-000000.tar") as tar:
        for key, members in index.samples.items():
            for extension, location in members.items():
                expected = tar.extractfile(f"{key}.{extension}").read()
                assert data[location.offset:location.offset + location.size] == expected


def test_two_builds_give_identical_bytes(make_demo_config):
    first, second = make_demo_config("a"), make_demo_config("b", workers=2)
    build_directly(first)
    build_directly(second)
    files_a, files_b = _files(first.output.out_dir), _files(second.output.out_dir)
    files_a.pop("config.json"), files_b.pop("config.json")  # records the out_dir itself
    assert files_a == files_b


def test_demo_stats_and_rejects(make_demo_config):
    config = make_demo_config()
    build_directly(config)
    out = config.output.out_dir
    stats = json.loads((out / "stats.json").read_text())
    assert stats["images_seen"] == 9 and stats["images_selected"] == 8 and stats["samples"] == 8
    assert stats["nouns"] == 22 and stats["nouns_with_mask"] == 14
    assert stats["rejects_by_reason"] == {"not_in_source": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file_name"], r["reason"]) for r in rejects] == [("000000999999.jpg", "not_in_source")]
    assert json.loads((out / "sizes.json").read_text()) == {"shard-000000.tar": 8}
    assert "- nouns: 22; with a mask: 14 (63.6%; 77.8% of those not on the stop-list)" in (out / "README.md").read_text()


def test_bad_images_become_rejects_and_the_build_finishes(source_builder, tmp_path):
    good = jpeg_bytes()
    source_builder.add(1, good)
    source_builder.add(2, b"")                                    # empty
    source_builder.add(3, good[:300])                             # truncated
    source_builder.add(4, b"\x00garbage" * 20)                    # not an image
    source_builder.add(5, None)                                   # missing file
    source_builder.add(6, good, captions=())                      # no captions
    source_builder.add(7, good, captions=("", "   "))             # empty captions only
    source_builder.add(8, good, captions=("A cat " + "and a cat " * 100,))  # very long
    source_builder.add(9, good, captions=("Very quickly and happily.",))   # no nouns
    source_builder.add(10, good, width=0, height=0)                # absurd dimensions
    source_builder.add(11, jpeg_bytes(mode="L"))
    source_builder.add(12, jpeg_bytes(mode="CMYK"))
    source_builder.add(13, good, captions=("A rocket in the sky.",))  # nothing to mask
    config = BuildConfig.model_validate({"source": source_builder.write(), "output": {"out_dir": str(tmp_path / "o")}})
    stats = build_directly(config)
    rejects = {json.loads(line)["image_id"]: json.loads(line)["reason"]
               for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()}
    assert rejects == {2: "empty_file", 3: "corrupt_image", 4: "not_an_image", 5: "missing_file", 6: "no_captions",
                       7: "no_usable_caption", 8: "no_usable_caption", 9: "no_nouns", 10: "absurd_dimensions",
                       13: "no_masks"}
    records = [SampleRecord.from_json_bytes(s["json"]) for s in _samples(tmp_path / "o")]
    assert sorted((r.image_id, r.image_mode) for r in records) == [(1, "RGB"), (11, "L"), (12, "CMYK")]
    assert stats.samples == 3


def test_unusable_configuration_stops_before_anything_is_written(make_demo_config, tmp_path):
    config = make_demo_config(source={"captions_json": str(tmp_path / "missing.json")})
    with pytest.raises(ConfigurationError, match="missing.json does not exist"):
        build_directly(config)
    assert not config.output.out_dir.exists()


def test_an_existing_dataset_of_another_configuration_is_never_touched(make_demo_config):
    first = make_demo_config("same")
    build_directly(first)
    before = _files(first.output.out_dir)
    other = make_demo_config("same", output={"shard_size": 2})
    with pytest.raises(ConfigurationError, match=r"other settings \(output.shard_size: \d+ -> 2\).*add --overwrite"):
        build_directly(other)
    assert _files(first.output.out_dir) == before
    replace = make_demo_config("same", output={"shard_size": 2, "overwrite": True})
    build_directly(replace)
    assert len(list((replace.output.out_dir / "shards").glob("*.tar"))) == 4


def test_a_folder_with_other_files_is_refused(make_demo_config):
    config = make_demo_config()
    config.output.out_dir.mkdir()
    (config.output.out_dir / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigurationError, match="not empty"):
        build_directly(config)
    assert (config.output.out_dir / "precious.txt").read_text() == "keep me"
