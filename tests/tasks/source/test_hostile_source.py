"""Hostile source entries end to end (the direct build): each becomes a reason or a rejects row,
never a failed shard or run."""
import json
import math

import numpy as np
import pytest
import webdataset as wds

from tests.support.testkit import jpeg_bytes
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.shards.dataset import build_directly

BED = 65
GOOD_10x10 = masks.encode(np.ones((10, 10), bool))["counts"]

# segmentation (or extra annotation fields) -> words the rejects row's detail must hold
MALFORMED_CAT_ANNOTATIONS = [
    ({"segmentation": []}, "no polygons"),
    ({"segmentation": [[]]}, "polygon 0 has 0 numbers"),
    ({"segmentation": [[0, 0, 10, 0, 20, 0]]}, "zero area"),
    ({"segmentation": [[1, 2, 3, 4]]}, "polygon 0 has 4 numbers"),
    ({"segmentation": [[0, 0, 10, 0, 10, 10, 0]]}, "polygon 0 has 7 numbers"),
    ({"segmentation": [[0, 0, "10", 0, 10, 10]]}, "'10', not a number"),
    ({"segmentation": [[0, 0, math.nan, 0, 10, 10]]}, "NaN or infinite"),
    ({"segmentation": [[0, 0, math.inf, 0, 10, 10]]}, "NaN or infinite"),
    ({"segmentation": [[0, 0, 1e300, 0, 10, 10]]}, "far outside"),
    ({"segmentation": {"size": [10, 10], "counts": GOOD_10x10}}, "size 10x10 differs from the image's 48x64"),
    ({"segmentation": {"size": [48, 64], "counts": "zzzz"}}, "outside the RLE alphabet"),
    ({"segmentation": {"size": [48, 64], "counts": "0`"}}, "end inside a run length"),
    ({"segmentation": {"size": [48, 64], "counts": GOOD_10x10}}, "runs cover 100 pixels"),
    ({"segmentation": {"size": [48, 64], "counts": [10, 5]}}, "runs cover 15 pixels"),
    ({"segmentation": {"size": [48, 64], "counts": [3072, -1]}}, "non-negative integers"),
    ({"segmentation": {"size": "48x64", "counts": "PP"}}, "size must be [height, width]"),
    ({"segmentation": {"counts": "PP"}}, "'size' and 'counts'"),
    ({"segmentation": "polygon"}, "unknown segmentation type str"),
    ({"segmentation": None}, "unknown segmentation type NoneType"),
    ({"bbox": "garbage"}, "'bbox' must be"),
    ({"bbox": [0, 0, math.nan, 1]}, "'bbox' must be"),
    ({"bbox": [0, 0, -5, 1]}, "'bbox' must be"),
    ({"iscrowd": "yes"}, "'iscrowd' must be 0 or 1"),
]


def _samples(out):
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    return {r.image_id: r for r in (SampleRecord.from_json_bytes(s["json"])
                                    for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False))}


def _rejects(out):
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def _build(source_builder, tmp_path, **settings):
    config = BuildConfig.model_validate({"source": source_builder.write(), "output": {"out_dir": str(tmp_path / "o")},
                                         **settings})
    build_directly(config)
    return tmp_path / "o"


def test_malformed_instance_annotations_become_a_noun_reason_and_a_rejects_row(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes())  # a good cat
    annotation_ids = {}
    for image_id, (fields, _) in enumerate(MALFORMED_CAT_ANNOTATIONS, start=2):
        source_builder.add(image_id, jpeg_bytes(seed=image_id), category_id=BED)  # a good bed: the sample stays
        fields = dict(fields)
        annotation_ids[image_id] = source_builder.annotate(image_id, fields.pop("segmentation", [[0, 0, 9, 0, 9, 9]]),
                                                           **fields)
    out = _build(source_builder, tmp_path)

    samples = _samples(out)
    assert sorted(samples) == list(range(1, len(MALFORMED_CAT_ANNOTATIONS) + 2))
    assert samples[1].nouns[0].text == "cat" and samples[1].nouns[0].mask is not None
    rows = {r["image_id"]: r for r in _rejects(out) if r["stage"] == "source"}
    for image_id, (_, words) in enumerate(MALFORMED_CAT_ANNOTATIONS, start=2):
        cat, bed = samples[image_id].nouns
        assert (cat.text, cat.mask, cat.reason, cat.category) == ("cat", None, "bad_annotation", "cat")
        assert bed.mask is not None, "the image's good annotations still give masks"
        row = rows[image_id]
        assert row["reason"] == "bad_annotation" and row["file_name"] == f"{image_id:012d}.jpg"
        assert row["detail"].startswith(f"instances.json annotations[{annotation_ids[image_id] - 1}] "
                                        f"(id {annotation_ids[image_id]}): ")
        assert words in row["detail"]


def test_annotations_that_name_no_usable_image_or_category_are_rows_and_dropped(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes(), category_id=BED)
    source_builder.annotate(1, [[0, 0, 9, 0, 9, 9]], category_id="cat")
    source_builder.annotate("1", [[0, 0, 9, 0, 9, 9]])
    source_builder.annotate(1, [[0, 0, 9, 0, 9, 9]], category_id=None)
    source_builder.instances.append("not an object")
    out = _build(source_builder, tmp_path)
    cat, bed = _samples(out)[1].nouns
    assert cat.reason == "category_not_annotated_in_image" and bed.mask is not None
    details = sorted(r["detail"] for r in _rejects(out))
    assert details == ["instances.json annotations[1] (id 2): 'category_id' must be an integer, found 'cat'",
                       "instances.json annotations[2] (id 3): 'image_id' must be an integer, found '1'",
                       "instances.json annotations[3] (id 4): 'category_id' must be an integer, found None",
                       "instances.json annotations[4]: is a string, not an object"]


def test_file_names_that_leave_the_image_folder_are_rejected_unread(source_builder, tmp_path):
    secret = jpeg_bytes(seed=99)
    (tmp_path / "outside.jpg").write_bytes(secret)
    (source_builder.images_dir / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (source_builder.images_dir / "inside-link.jpg").symlink_to(source_builder.images_dir / "000000000001.jpg")
    source_builder.add(1, jpeg_bytes())
    source_builder.add(2, None, file_name="../outside.jpg")
    source_builder.add(3, None, file_name=str(tmp_path / "outside.jpg"))
    source_builder.add(4, None, file_name="link.jpg")
    source_builder.add(5, None, file_name="a\x00b.jpg")
    source_builder.add(6, None, file_name="sub/../../outside.jpg")
    source_builder.add(7, None, file_name="inside-link.jpg")
    source_builder.add(8, None, file_name=".")
    out = _build(source_builder, tmp_path)
    rejects = {r["image_id"]: r["reason"] for r in _rejects(out)}
    assert rejects == {i: "unsafe_file_name" for i in (2, 3, 4, 5, 6, 8)}
    assert sorted(_samples(out)) == [1, 7]
    assert all(secret not in p.read_bytes() for p in (out / "shards").glob("*.tar"))


def test_captions_that_are_not_text_are_excluded_with_a_reason(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes(), captions=(42, None, ["a cat"], {"text": "a cat"}, True, "A cat on a bed."))
    source_builder.add(2, jpeg_bytes(), captions=(3.5, None))
    source_builder.add(3, jpeg_bytes(), captions=("\u200b\u00ad ",))
    out = _build(source_builder, tmp_path)
    sample = _samples(out)[1]
    assert sample.caption == "A cat on a bed."
    assert sorted(c.excluded or "" for c in sample.candidates) == [
        "", "not text (a boolean)", "not text (a number)", "not text (an array)", "not text (an object)",
        "not text (null)"]
    assert all(c.text == "" for c in sample.candidates if c.excluded)
    rejects = {r["image_id"]: (r["reason"], r["detail"]) for r in _rejects(out)}
    assert rejects == {2: ("no_usable_caption", "not text (a number); not text (null)"),
                       3: ("no_usable_caption", "empty")}


def test_a_caption_with_lone_surrogates_is_not_text(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes(), captions=("A cat on a bed.", "A cat \ud800 on a bed."))
    out = _build(source_builder, tmp_path)
    excluded = [c.excluded for c in _samples(out)[1].candidates if c.excluded]
    assert excluded == ["not text (a string that is not valid Unicode)"]


@pytest.mark.parametrize("caption,nouns", [
    ("A cat\u200b sitting on a bed\u00ad.", [("cat", "cat"), ("bed", "bed")]),
    ("A c\u00adat on a b\u200bed in \u202efront\u202c of it\ufeff.", [("c\u00adat", "cat"), ("b\u200bed", "bed"),
                                                                    ("front", None)]),
    ("A \u2060cat\u200d and a \u200ebed\u200f.", [("cat", "cat"), ("bed", "bed")]),
])
def test_invisible_characters_do_not_hide_nouns_and_spans_index_the_stored_caption(source_builder, tmp_path,
                                                                                   caption, nouns):
    source_builder.add(1, jpeg_bytes(), captions=(caption,), category_id=BED)
    source_builder.annotate(1, [[40, 0, 60, 0, 60, 40, 40, 40]])
    out = _build(source_builder, tmp_path)
    sample = _samples(out)[1]
    assert sample.caption == caption.strip(), "the stored caption keeps its characters"
    assert [(n.text, n.category) for n in sample.nouns] == nouns
    for noun in sample.nouns:
        assert sample.caption[noun.span[0]:noun.span[1]] == noun.text
        assert (noun.mask is None) == (noun.category is None)
    assert [n.reason for n in sample.nouns if n.category is None] == ["stop_list"] * (len(nouns) - 2)
