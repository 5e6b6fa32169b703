"""Property-based tests: generated COCO sources (hostile entries, captions of any JSON type, every
shape of segmentation, broken image files) and VSR files. The build never fails for a per-image
problem, every selected image ends as a sample or a rejects row, every sample is valid, and a source
unusable as a whole stops the run before anything is written, naming the file and the entry."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.reports import Reject
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.shards.dataset import build_directly
from tokencompose.tasks.shards.output import ConfigurationError
from tokencompose.tasks.source.coco_json import MAX_ID
from tokencompose.tasks.source.selection import read_vsr_image_names, select_images

BOUNDED = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                          HealthCheck.data_too_large])
IMAGE_LEVEL_STAGES = {"captions", "image", "nouns", "grounding"}

# -- values -------------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
WORDS = ["A", "cat", "dog", "bed", "on", "the", "front", "of", "a", "teddy bear", "people", "sitting", ".", ","]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e", "\u202e", "\u2066", "\u00a0"]
caption_text = st.lists(st.sampled_from(WORDS + INVISIBLE + [" ", "\ud800", "\x00", "\U0001f431", "\uff43\uff41\uff54"]),
                        max_size=12).map(lambda parts: " ".join(parts))
BASE_CAPTIONS = ["A cat sitting on a bed.", "Two cats on the front of a bed", "A dog and a teddy bear.",
                 "people near a cat"]


def _insert(caption: str, insertions: list[tuple[int, str]]) -> str:
    for position, char in insertions:
        position %= len(caption) + 1
        caption = caption[:position] + char + caption[position:]
    return caption


usual_caption = st.builds(_insert, st.sampled_from(BASE_CAPTIONS),
                          st.lists(st.tuples(st.integers(0, 40), st.sampled_from(INVISIBLE)), max_size=3))
any_caption = st.one_of(usual_caption, usual_caption, usual_caption, caption_text, json_values)
hostile_ids = st.sampled_from(["7", None, -1, 2**70, True, 1.5, [1], {"id": 1}])
number = st.one_of(st.integers(-100, 200), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([1e300, "12", None, True]))


@st.composite
def segmentations(draw, width: int, height: int):
    kind = draw(st.sampled_from(["polygon"] * 6 + ["hostile polygon", "rle", "bad rle", "uncompressed", "other"]))
    if kind == "polygon":
        points = draw(st.lists(st.tuples(st.floats(0, width), st.floats(0, height)), min_size=3, max_size=6))
        return [[v for point in points for v in point]]
    if kind == "hostile polygon":
        return draw(st.lists(st.lists(number, max_size=8), max_size=2))
    if kind == "rle":
        seed = draw(st.integers(0, 2**16))
        mask = np.random.default_rng(seed).random((max(height, 1), max(width, 1))) < 0.5
        rle = masks.encode(mask)
        return draw(st.sampled_from([rle, {**rle, "size": [rle["size"][1], rle["size"][0]]}, {**rle, "size": [3, 3]}]))
    if kind == "bad rle":
        return {"size": draw(st.one_of(st.just([height, width]), json_values)),
                "counts": draw(st.one_of(st.text(st.characters(min_codepoint=40, max_codepoint=120), max_size=12),
                                         json_values))}
    if kind == "uncompressed":
        return {"size": [height, width], "counts": draw(st.lists(st.one_of(st.integers(-5, width * height + 5),
                                                                           number), max_size=5))}
    return draw(json_values)


# -- image files ----------------------------------------------------------------------------------

def _encoded(mode: str, width: int, height: int, file_format: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    return buffer.getvalue()


@st.composite
def image_files(draw):
    """(bytes or None for no file, width, height) of one image file."""
    width, height = draw(st.sampled_from([(64, 48)] * 4 + [(1, 1), (8, 8), (300, 8), (9, 40)]))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["jpeg"] * 6 + ["png", "png", "truncated", "random", "missing", "empty"]))
    if kind == "jpeg":
        data = _encoded(draw(st.sampled_from(["RGB", "L", "CMYK"])), width, height, "JPEG", seed)
    elif kind == "png":
        data = _encoded(draw(st.sampled_from(["RGB", "RGBA", "P", "L", "I;16"])), width, height, "PNG", seed)
    elif kind == "truncated":
        whole = _encoded("RGB", width, height, draw(st.sampled_from(["JPEG", "PNG"])), seed)
        data = whole[: draw(st.integers(1, max(1, len(whole) - 1)))]
    elif kind == "random":
        data = draw(st.binary(min_size=1, max_size=64))
    else:
        data = None if kind == "missing" else b""
    return data, width, height


# -- a whole source -------------------------------------------------------------------------------

HOSTILE_NAMES = ["../{i}.jpg", "/etc/{i}.jpg", "a\x00{i}.jpg", "sub/../../{i}.jpg", "{i}.png", "./{i}.jpg",
                 "link-{i}.jpg"]


@st.composite
def sources(draw):
    """{"images": [...], "captions": [...], "instances": [...], "files": {name: bytes}, "valid_ids": {...}}"""
    images, captions, instances, files, valid_ids = [], [], [], {}, set()
    for i in range(draw(st.integers(1, 6))):
        data, width, height = draw(image_files())
        image_id = i + 1
        name = f"{image_id:012d}.jpg"
        entry = {"id": image_id, "file_name": name, "width": width, "height": height}
        damage = draw(st.sampled_from(["none"] * 12 + ["id", "name", "size", "entry", "absurd"]))
        if damage == "id":
            entry["id"] = draw(hostile_ids)
        elif damage == "name":
            entry["file_name"] = draw(st.one_of(st.sampled_from(HOSTILE_NAMES).map(lambda n: n.format(i=image_id)),
                                                st.sampled_from(["", "\ud800.jpg", 5, None])))
        elif damage == "size":
            entry[draw(st.sampled_from(["width", "height"]))] = draw(st.sampled_from(["64", None, 2.0, True]))
        elif damage == "absurd":
            entry["width"] = draw(st.sampled_from([0, -3, 10**9, 10**30]))
        if damage == "entry":
            entry = draw(json_scalars)
        images.append(entry)
        if data is not None and isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
            files[name] = data
        if (isinstance(entry, dict) and type(entry.get("id")) is int and 0 <= entry["id"] <= MAX_ID
                and isinstance(entry.get("file_name"), str) and entry["file_name"] and entry["file_name"] != "\ud800.jpg"
                and type(entry.get("width")) is int and type(entry.get("height")) is int):
            valid_ids.add(entry["id"])
        for j, text in enumerate(draw(st.lists(any_caption, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=3))):
            captions.append({"id": image_id * 10 + j, "image_id": image_id, "caption": text})
        if draw(st.integers(0, 3)) == 0:
            captions.append(draw(st.one_of(json_values, st.fixed_dictionaries({"image_id": hostile_ids,
                                                                               "caption": any_caption}))))
        for _ in range(draw(st.integers(0, 3))):
            instance = {"id": len(instances) + 1, "image_id": image_id,
                        "category_id": draw(st.sampled_from([17, 65, 18, 88, 1, 17, 65, "17", None])),
                        "segmentation": draw(segmentations(width, height)),
                        "bbox": draw(st.one_of(st.just([0, 0, 1, 1]), st.just([0, 0, 1, 1]), json_values)),
                        "iscrowd": draw(st.sampled_from([0, 0, 0, 1, "1", None]))}
            instances.append(draw(st.sampled_from([instance] * 5 + ["not an object"])))
    return {"images": images, "captions": captions, "instances": instances, "files": files, "valid_ids": valid_ids}


class Workspace:
    """One source folder rewritten for each example: the same paths keep the loaded backends
    (spaCy) cached across examples; each build gets a new output folder."""

    def __init__(self, root: Path):
        self.root = root
        self.builds = 0

    def write(self, source: dict) -> dict:
        images_dir = self.root / "images"
        shutil.rmtree(images_dir, ignore_errors=True)
        images_dir.mkdir(parents=True)
        outside = self.root / "outside.jpg"
        outside.write_bytes(_encoded("RGB", 64, 48, "JPEG", 1))
        for name, data in source["files"].items():
            (images_dir / name).write_bytes(data)
        for entry in source["images"]:  # names of the form link-N.jpg are symlinks out of the folder
            if isinstance(entry, dict) and str(entry.get("file_name", "")).startswith("link-"):
                (images_dir / entry["file_name"]).symlink_to(outside)
        (self.root / "captions.json").write_text(json.dumps({"images": source["images"],
                                                             "annotations": source["captions"]}))
        (self.root / "instances.json").write_text(json.dumps({"annotations": source["instances"]}))
        return {"images_dir": str(images_dir), "captions_json": str(self.root / "captions.json"),
                "instances_json": str(self.root / "instances.json")}

    def config(self, source_settings: dict, **settings) -> BuildConfig:
        self.builds += 1
        out = self.root / f"out-{self.builds}"
        return BuildConfig.model_validate({"source": source_settings, "output": {"out_dir": str(out), **settings}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("properties"))


@pytest.mark.slow
@settings(BOUNDED, max_examples=60)
@given(source=sources(), image_field=st.sampled_from(["jpg", "jpg", "png"]), require_mask=st.booleans())
def test_every_selected_image_is_a_valid_sample_or_a_rejects_row(workspace, source, image_field, require_mask):
    config = workspace.config(workspace.write(source), image_field=image_field, require_mask=require_mask,
                              shard_size=3)
    build_directly(config)  # never raises for a per-image problem
    out = config.output.out_dir

    rejects = [Reject.model_validate_json(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    dropped = [r.image_id for r in rejects if r.stage in IMAGE_LEVEL_STAGES]
    assert all(r.stage in IMAGE_LEVEL_STAGES | {"source"} for r in rejects)
    assert all(r.detail.startswith(("captions.json ", "instances.json ")) for r in rejects if r.stage == "source")
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False, empty_check=False)) if shards else []
    records = []
    for sample in samples:
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {image_field, "json"}
        record = SampleRecord.from_json_bytes(sample["json"])  # validates the schema and the spans
        for noun in record.nouns:
            assert record.caption[noun.span[0]:noun.span[1]] == noun.text
        assert (config.source.images_dir / record.file_name).read_bytes() == sample[image_field]
        records.append(record)
    written = [r.image_id for r in records]
    assert len(written) + len(dropped) == json.loads((out / "stats.json").read_text())["images_selected"]
    assert sorted(written + dropped) == sorted(source["valid_ids"]), "each selected image exactly once"
    assert (out / "manifest.json").exists()
    event(f"samples written: {min(len(written), 2)}+; reject reasons: {sorted({r.reason for r in rejects})}")


@BOUNDED
@given(source=sources())
def test_the_same_source_gives_the_same_bytes(workspace, source):
    source_settings = workspace.write(source)
    first, second = workspace.config(source_settings), workspace.config(source_settings)
    build_directly(first)
    build_directly(second)
    for path in sorted((first.output.out_dir / "shards").glob("*.tar")):
        assert path.read_bytes() == (second.output.out_dir / "shards" / path.name).read_bytes()
    assert (first.output.out_dir / "rejects.jsonl").read_bytes() == (second.output.out_dir / "rejects.jsonl").read_bytes()


def _duplicate(images: list) -> dict:
    return {"images": images + [dict(images[0])], "annotations": []}


UNUSABLE_CAPTIONS_JSON = st.one_of(
    st.one_of(st.lists(json_values, max_size=2), json_scalars).map(lambda v: (v, "must hold a JSON object")),
    st.dictionaries(st.sampled_from(["annotations", "info"]), json_values, max_size=2).map(
        lambda v: ({**v, "annotations": []}, "has no list 'images'")),
    json_scalars.map(lambda v: ({"images": v, "annotations": []}, "has no list 'images'")),
    json_scalars.map(lambda v: ({"images": [], "annotations": v}, "has no list 'annotations'")),
    st.integers(1, 4).map(lambda n: (_duplicate([{"id": i, "file_name": f"{i}.jpg", "width": 9, "height": 9}
                                                 for i in range(1, n + 1)]), rf"images\[{n}\] repeats the id 1")),
)


@BOUNDED
@given(case=UNUSABLE_CAPTIONS_JSON)
def test_a_source_unusable_as_a_whole_stops_before_anything_is_written(workspace, case):
    document, message = case
    source_settings = workspace.write({"images": [], "captions": [], "instances": [], "files": {}})
    Path(source_settings["captions_json"]).write_text(json.dumps(document))
    config = workspace.config(source_settings)
    with pytest.raises(ConfigurationError, match=r"captions\.json") as error:
        build_directly(config)
    assert __import__("re").search(message, str(error.value))
    assert not config.output.out_dir.exists()


vsr_lines = st.one_of(
    st.sampled_from([f"{i:012d}.jpg" for i in range(1, 5)] + ["missing.jpg"]).map(lambda n: json.dumps({"image": n})),
    st.sampled_from([f"{i:012d}.jpg" for i in range(1, 5)]).map(lambda n: json.dumps({"image": n, "label": 1})),
    json_values.map(json.dumps),
    st.fixed_dictionaries({"image": json_values}).map(json.dumps),
    st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
    st.just(""), st.just("   "), st.just("{broken"), st.just("[" * 3000), st.just('{"image": "\\ud800"}'),
)


@BOUNDED
@given(lines=st.lists(vsr_lines, max_size=12))
def test_vsr_lines_are_names_or_rejects_with_file_and_line(workspace, lines):
    vsr = workspace.root / "split.jsonl"
    vsr.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    names, rejects = read_vsr_image_names(vsr)
    non_blank = [n for n, line in enumerate(vsr.read_text(errors="replace").split("\n"), start=1) if line.strip()]
    accepted = len(non_blank) - len(rejects)
    assert len(names) <= accepted and len(set(names)) == len(names)
    assert all(r.reason == "malformed_vsr_line" and r.detail.startswith(f"split.jsonl:{n}:")
               for r, n in zip(rejects, [int(r.detail.split(":")[1]) for r in rejects]))
    assert all(int(r.detail.split(":")[1]) in non_blank for r in rejects)
    for name in names:
        json.dumps(name).encode("utf-8")

    source = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 8} for i in range(1, 4)],
              "captions": [], "instances": [], "files": {}}
    config = BuildConfig.model_validate({"source": workspace.write(source), "output": {"out_dir": str(workspace.root / "v")},
                                         "selection": {"policy": "vsr", "vsr_files": [str(vsr)]}})
    selection = select_images(config)
    chosen = [r.file_name for r in selection.images]
    not_in_source = [r.file_name for r in selection.rejects if r.reason == "not_in_source"]
    assert sorted(chosen + not_in_source) == sorted(names) and selection.seen == len(names)
