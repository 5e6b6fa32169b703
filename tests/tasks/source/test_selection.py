import json

import pytest

from tests.support.testkit import jpeg_bytes
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.selection import load_source, read_vsr_image_names, select_images


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
    ({"annotations": []}, "captions.json has no list 'images'"),
    ({"images": {}, "annotations": []}, "captions.json has no list 'images'"),
    ({"images": [], "annotations": "x"}, "captions.json has no list 'annotations'"),
    ([], "captions.json must hold a JSON object"),
    ("[" * 100_000, "captions.json is not valid JSON"),
])
def test_an_unusable_coco_json_stops_with_where(source_builder, broken, message):
    source = source_builder.write()
    (source_builder.root / "captions.json").write_text(broken if isinstance(broken, str) else json.dumps(broken))
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


def test_bad_entries_become_source_rows_naming_file_and_entry(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes())
    source_builder.add(2, jpeg_bytes())
    source = source_builder.write()
    data = json.loads((source_builder.root / "captions.json").read_text())
    data["images"] += [{"id": 3, "file_name": "c.jpg", "width": 5}, "not an object", {"id": "4", "file_name": "d.jpg"}]
    data["annotations"] += [{"caption": "no image id"}, {"id": "x", "image_id": 1, "caption": "bad id"}, 7]
    (source_builder.root / "captions.json").write_text(json.dumps(data))
    selection = select_images(_config(source, tmp_path))
    assert [r.image_id for r in selection.images] == [1, 2]
    rows = sorted((r.stage, r.reason, r.detail) for r in selection.rejects)
    assert rows == [
        ("source", "bad_caption_entry", "captions.json annotations[2]: 'image_id' must be an integer, found None"),
        ("source", "bad_caption_entry", "captions.json annotations[3] (id 'x'): 'id' must be an integer or absent, "
                                        "found 'x'"),
        ("source", "bad_caption_entry", "captions.json annotations[4]: is a number, not an object"),
        ("source", "bad_image_entry", "captions.json images[2] (id 3): 'height' must be an integer, found None"),
        ("source", "bad_image_entry", "captions.json images[3]: is a string, not an object"),
        ("source", "bad_image_entry", "captions.json images[4] (id '4'): 'id' must be an integer from 0 to "
                                      "9223372036854775807, found '4'"),
    ]
    assert selection.seen == 5


def test_a_vsr_name_of_a_broken_image_entry_is_reported_once(source_builder, tmp_path):
    source_builder.add(1, jpeg_bytes())
    source = source_builder.write()
    data = json.loads((source_builder.root / "captions.json").read_text())
    data["images"] += [{"id": 2, "file_name": "b.jpg", "width": "wide", "height": 4},
                       {"id": 3, "file_name": "c.jpg", "width": None, "height": 4}]
    (source_builder.root / "captions.json").write_text(json.dumps(data))
    vsr = tmp_path / "v.jsonl"
    vsr.write_text("\n".join(json.dumps({"image": n}) for n in ("000000000001.jpg", "b.jpg")))
    selection = select_images(_config(source, tmp_path, policy="vsr", vsr_files=[str(vsr)]))
    assert [(r.reason, r.file_name) for r in selection.rejects] == [("bad_image_entry", "b.jpg")]


@pytest.mark.parametrize("line,why", [
    ("[1, 2]", "an array, not an object"), ('"x.jpg"', "a string, not an object"), ("null", "null, not an object"),
    ('{"image": 5}', "'image' is not a file name"), ('{"image": "\\ud800.jpg"}', "'image' is not a file name"),
    ('{"caption": "x"}', "no 'image' key"), ("[" * 50_000, "maximum recursion"), ("{broken", "Expecting"),
])
def test_malformed_vsr_lines_are_rejects_with_file_and_line(tmp_path, line, why):
    vsr = tmp_path / "v.jsonl"
    vsr.write_text('{"image": "a.jpg"}\n\n' + line + "\n")
    names, rejects = read_vsr_image_names(vsr)
    assert names == ["a.jpg"]
    assert [(r.reason, r.detail.split(":")[0] + ":" + r.detail.split(":")[1]) for r in rejects] == [
        ("malformed_vsr_line", "v.jsonl:3")]
    assert why in rejects[0].detail


def test_a_keys_file_from_the_viewer_restricts_the_build(make_demo_config, tmp_path):
    """The viewer's export (keys.txt or keys.json) is a list a build can take."""
    import json as json_module

    from tokencompose.tasks.source.selection import select_images

    everything = [r.image_id for r in select_images(make_demo_config("all")).images]
    keys_txt = tmp_path / "keys.txt"
    keys_txt.write_text(f"# chosen in the viewer\n{everything[2]:012d}\n\n{everything[0]:012d}\n")
    chosen = select_images(make_demo_config("txt", selection={"keys_file": str(keys_txt)}))
    assert [r.image_id for r in chosen.images] == [everything[0], everything[2]]   # selection order kept
    keys_json = tmp_path / "keys.json"
    keys_json.write_text(json_module.dumps({"dataset": "x", "count": 1, "keys": [f"{everything[1]:012d}"]}))
    config = make_demo_config("json", selection={"keys_file": str(keys_json)})
    assert [r.image_id for r in select_images(config).images] == [everything[1]]
    assert config.config_hash() != make_demo_config("plain").config_hash()
    assert "keys_file" not in make_demo_config("plain").content_dict()["selection"]
