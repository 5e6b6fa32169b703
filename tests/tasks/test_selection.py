import json

import pytest

from testkit import jpeg_bytes
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.selection import SourceError, load_source, read_vsr_image_names, select_images


def _config(source, tmp_path, **selection):
    return BuildConfig.model_validate({"source": source, "selection": selection, "output": {"out_dir": str(tmp_path / "o")}})


def test_vsr_keeps_distinct_images_in_first_appearance_order(source_builder, tmp_path):
    for image_id in (5, 3, 9):
        source_builder.add(image_id, jpeg_bytes())
    source = source_builder.write()
    vsr = tmp_path / "train.jsonl"
    rows = [{"image": "000000000009.jpg"}, {"image": "000000000003.jpg"}, {"image": "000000000009.jpg"},
            {"image": "000000000777.jpg"}]
    vsr.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n" + json.dumps({"caption": "x"}) + "\n")
    selection = select_images(_config(source, tmp_path, policy="vsr", vsr_files=[str(vsr)]))
    assert [r.image_id for r in selection.images] == [9, 3]
    reasons = sorted((r.reason, r.detail.split(":")[0] + ":" + r.detail.split(":")[1] if r.reason.startswith("malformed") else r.file_name)
                     for r in selection.rejects)
    assert reasons == [("malformed_vsr_line", "train.jsonl:5"), ("malformed_vsr_line", "train.jsonl:6"),
                       ("not_in_source", "000000000777.jpg")]


def test_all_policy_orders_by_id_and_limits(source_builder, tmp_path):
    for image_id in (5, 3, 9):
        source_builder.add(image_id, jpeg_bytes())
    selection = select_images(_config(source_builder.write(), tmp_path, policy="all", limit=2))
    assert [r.image_id for r in selection.images] == [3, 5]


def test_captions_are_attached_in_id_order(source_builder):
    source_builder.add(1, jpeg_bytes(), captions=("first", "second"))
    records = load_source(_config(source_builder.write(), source_builder.root).source)
    assert [c.text for c in records["000000000001.jpg"].captions] == ["first", "second"]


@pytest.mark.parametrize("broken,message", [
    ({"annotations": []}, "no list 'images'"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "width": 5}], "annotations": []}, r"images\[0\] needs 'height'"),
    ({"images": [], "annotations": [{"caption": "x"}]}, r"annotations\[0\] needs 'image_id'"),
    ([], "must hold a JSON object"),
])
def test_coco_json_missing_keys_stops_with_where(source_builder, broken, message):
    source = source_builder.write()
    (source_builder.root / "captions.json").write_text(json.dumps(broken))
    with pytest.raises(SourceError, match=message):
        load_source(_config(source, source_builder.root).source)


def test_missing_files_stop_the_run(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_vsr_image_names(tmp_path / "nope.jsonl")


def test_repeated_image_ids_stop_the_run(source_builder):
    source_builder.add(1, jpeg_bytes())
    source = source_builder.write()
    data = json.loads((source_builder.root / "captions.json").read_text())
    data["images"].append({**data["images"][0], "file_name": "other.jpg"})
    (source_builder.root / "captions.json").write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"images\[1\] repeats the id 1"):
        load_source(_config(source, source_builder.root).source)
