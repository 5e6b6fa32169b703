"""Human grounding over crafted (valid) LVIS v1 and COCO-Stuff files: noun -> category (synonyms, tie
rule, curated table, hypernyms), LVIS's federated lists, unions, source order, provenance, reading."""
import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.support.testkit import SourceBuilder, jpeg_bytes
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.models.backends import GROUNDING_BACKENDS
from tokencompose.tasks.grounding.coco import CocoAnnotationGrounder, NounTable
from tokencompose.tasks.grounding.human import (LVIS_CATEGORIES, HumanGrounder, HumanNounTable, LvisVocabulary, NounResolver,
                                                lvis_vocabulary, normalise_lvis, stuff_keys)
from tokencompose.tasks.source.coco_json import SourceError
from tokencompose.tasks.source.selection import read_source

W, H = 64, 48
LVIS = {c["name"]: c for c in json.loads(LVIS_CATEGORIES.read_text())}
STUFF = [{"id": 124, "name": "grass"}, {"id": 157, "name": "sky-other"}, {"id": 165, "name": "table"},
         {"id": 171, "name": "wall-brick"}, {"id": 173, "name": "wall-other"}, {"id": 183, "name": "other"}]


def box(x0, y0, x1, y1):
    return [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]


def rle(x0, y0, x1, y1):
    grid = np.zeros((H, W), np.uint8)
    grid[y0:y1, x0:x1] = 1
    encoded = coco_mask.encode(np.asfortranarray(grid))
    return {"size": [H, W], "counts": encoded["counts"].decode("ascii")}


def lvis_ann(image_id, name, rect):
    return {"image_id": image_id, "category_id": LVIS[name]["id"], "segmentation": box(*rect),
            "bbox": [rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]], "area": 1.0}


def write_source(root, lvis_images, lvis_anns, stuff_anns, captions=("A cat.",), lvis_categories=None):
    """A COCO source of images 1..3 (image 1: a COCO cat on the left quarter) with LVIS and Stuff files."""
    builder = SourceBuilder(root)
    for image_id in (1, 2, 3):
        builder.add(image_id, jpeg_bytes(W, H, seed=image_id), W, H, captions=captions)
    builder.instances = [{"id": 1, "image_id": 1, "category_id": 17, "segmentation": box(0, 0, 16, 48),
                          "bbox": [0, 0, 16, 48], "iscrowd": 0}]
    captions_path, instances_path = root / "captions.json", root / "instances.json"
    common = {"images": builder.images}
    captions_path.write_text(json.dumps({**common, "annotations": builder.captions}))
    instances_path.write_text(json.dumps({**common, "annotations": builder.instances}))
    for n, ann in enumerate(lvis_anns, 1):
        ann["id"] = n
    lvis_path, stuff_path = root / "lvis_v1_val.json", root / "stuff_val2017.json"
    used = {a["category_id"] for a in lvis_anns}
    lvis_path.write_text(json.dumps({
        "images": lvis_images, "annotations": lvis_anns,
        "categories": lvis_categories if lvis_categories is not None else
        [c for c in LVIS.values() if c["id"] in used]}))
    stuff_path.write_text(json.dumps({
        "images": builder.images, "categories": [{**c, "supercategory": "x"} for c in STUFF],
        "annotations": [{"id": n, "iscrowd": 0, "bbox": [0, 0, 1, 1], "area": 1.0, **a}
                        for n, a in enumerate(stuff_anns, 1)]}))
    return BuildConfig.model_validate({
        "source": {"images_dir": str(builder.images_dir), "captions_json": str(captions_path),
                   "instances_json": str(instances_path), "lvis_json": [str(lvis_path)],
                   "stuff_json": [str(stuff_path)]},
        "output": {"out_dir": str(root / "out")}})


def lvis_image(image_id, neg=(), not_exhaustive=()):
    return {"id": image_id, "width": W, "height": H, "coco_url": f"http://images.cocodataset.org/val2017/"
            f"{image_id:012d}.jpg", "neg_category_ids": list(neg), "not_exhaustive_category_ids": list(not_exhaustive)}


@pytest.fixture
def scene(tmp_path):
    """Image 1: COCO cat (x 0-16); LVIS dog (x 16-32), two LVIS flags (x 40-48 and 56-64), LVIS table not
    exhaustive (y 40-48), saucer checked absent; Stuff grass, sky, table, two walls, "other" over the cat.
    Image 2: in LVIS with nothing annotated. Image 3: not in the LVIS file."""
    config = write_source(
        tmp_path,
        [lvis_image(1, neg=[LVIS["saucer"]["id"]], not_exhaustive=[LVIS["table"]["id"]]), lvis_image(2)],
        [lvis_ann(1, "dog", (16, 0, 32, 48)), lvis_ann(1, "flag", (40, 0, 48, 8)), lvis_ann(1, "flag", (56, 0, 64, 8)),
         lvis_ann(1, "table", (32, 40, 64, 48))],
        [{"image_id": 1, "category_id": 124, "segmentation": rle(32, 30, 64, 40)},
         {"image_id": 1, "category_id": 157, "segmentation": rle(32, 8, 64, 16)},
         {"image_id": 1, "category_id": 165, "segmentation": rle(32, 16, 48, 24)},
         {"image_id": 1, "category_id": 171, "segmentation": rle(32, 24, 48, 30)},
         {"image_id": 1, "category_id": 173, "segmentation": rle(48, 16, 64, 30)},
         {"image_id": 1, "category_id": 183, "segmentation": rle(0, 0, 16, 48)}])
    records = {r.image_id: r for r in read_source(config.source).records.values()}
    return config, records


def grounder(config, order=("coco", "lvis", "stuff")):
    coco = CocoAnnotationGrounder(None, True)
    return HumanGrounder(coco, list(order), bool(config.source.lvis_json), bool(config.source.stuff_json))


def pixels(grounding):
    return int(masks.area(grounding.mask.model_dump()))


def region(grounding):
    return coco_mask.decode({"size": list(grounding.mask.size), "counts": grounding.mask.counts.encode()})


def test_lvis_names_normalised_and_synonyms_resolve():
    assert normalise_lvis("bow_(weapon)") == "bow" and normalise_lvis("T-shirt") == "t-shirt"
    vocabulary = lvis_vocabulary()
    assert vocabulary.names[vocabulary.index["spray can"]] == "aerosol_can"  # a synonym
    assert vocabulary.names[vocabulary.index["orange"]] == "orange_(fruit)"  # qualifier dropped
    resolver = NounResolver(NounTable())
    # keys: two tripods, two tripod, twotripods, twotripod, tripods, tripod
    assert resolver.resolve("two tripods").per_source == {"lvis": (5, LVIS["tripod"]["id"])}


def test_lvis_tie_rule_name_then_frequency_then_id():
    # each case is decided by its rule alone: the loser is more frequent or has the lower id
    categories = [{"id": 5, "name": "pad_(writing)", "synonyms": ["pad_(writing)", "notepad"], "frequency": "f"},
                  {"id": 7, "name": "pad", "synonyms": ["pad", "cushion"], "frequency": "r"},
                  {"id": 9, "name": "cushion_(seat)", "synonyms": ["cushion_(seat)"], "frequency": "r"},
                  {"id": 30, "name": "notepad", "synonyms": ["notepad"], "frequency": "c"},
                  {"id": 11, "name": "mat_(a)", "synonyms": ["mat_(a)"], "frequency": "c"},
                  {"id": 12, "name": "mat_(b)", "synonyms": ["mat_(b)"], "frequency": "f"},
                  {"id": 13, "name": "rug_(x)", "synonyms": ["rug_(x)"], "frequency": "c"},
                  {"id": 14, "name": "rug_(y)", "synonyms": ["rug_(y)"], "frequency": "c"}]
    index = LvisVocabulary(categories).index
    assert index["pad"] == 7  # its exact name, over "pad_(writing)" (the name less its qualifier)
    assert index["notepad"] == 30  # an exact name beats a synonym of a frequent, lower id
    assert index["cushion"] == 9  # a name less its qualifier beats a synonym
    assert index["mat"] == 12  # equal matches: f before c
    assert index["rug"] == 13  # equal matches and frequency: the lowest id


def test_stuff_names_and_other():
    assert stuff_keys("wall-brick") == ("brick wall", "wall")
    assert stuff_keys("sky-other-merged") == ("sky", "sky")
    assert stuff_keys("window-blind") == ("window blind", "blind")
    assert stuff_keys("other") is None


def test_reading_keeps_federated_lists_and_drops_other(scene):
    config, records = scene
    human = records[1].human
    assert {a.category_id for a in human.lvis} == {LVIS[n]["id"] for n in ("dog", "flag", "table")}
    assert human.lvis_negative == {LVIS["saucer"]["id"]} and human.lvis_not_exhaustive == {LVIS["table"]["id"]}
    assert 183 not in {a.category_id for a in human.stuff} and 183 not in human.stuff_names
    assert records[2].human.lvis == () and records[3].human.lvis is None


def test_source_order_and_provenance(scene):
    config, records = scene
    default = grounder(config)
    cat = default.ground_noun(records[1], "cat")
    assert cat.source == "coco_annotations" and cat.category == "cat" and pixels(cat) == 16 * 48
    dog = default.ground_noun(records[1], "a dog")
    assert dog.source == "lvis_annotations" and dog.category == "dog" and pixels(dog) == 16 * 48
    grass = default.ground_noun(records[1], "lawn")  # curated: lawn -> grass
    assert grass.source == "stuff_annotations" and grass.category == "grass" and pixels(grass) == 32 * 10
    # "table": COCO's dining table is absent, so LVIS (first of the rest) masks it, flagged not exhaustive
    table = default.ground_noun(records[1], "table")
    assert table.source == "lvis_annotations_not_exhaustive" and pixels(table) == 32 * 8
    stuff_first = grounder(config, ("stuff", "lvis", "coco")).ground_noun(records[1], "table")
    assert stuff_first.source == "stuff_annotations" and stuff_first.category == "table" and pixels(stuff_first) == 16 * 8
    assert grounder(config, ("lvis", "coco")).ground_noun(records[1], "cat").source == "coco_annotations"  # LVIS: no cat here
    info = default.info()
    assert info.name == "human" and info.details["order"] == "coco,lvis,stuff"


def test_union_of_instances_and_stuff_heads(scene):
    config, records = scene
    human = grounder(config)
    flags = human.ground_noun(records[1], "flags")
    assert pixels(flags) == 2 * 8 * 8 and len(flags.boxes) == 2
    assert region(flags)[0:8, 40:48].all() and region(flags)[0:8, 56:64].all() and not region(flags)[0:8, 48:56].any()
    walls = human.ground_noun(records[1], "walls")  # the head: wall-brick and wall-other
    assert walls.source == "stuff_annotations" and walls.category == "wall" and pixels(walls) == 16 * 6 + 16 * 14
    brick = human.ground_noun(records[1], "brick wall")  # the whole phrase: wall-brick only
    assert brick.category == "wall-brick" and pixels(brick) == 16 * 6


def test_federated_reasons(scene):
    config, records = scene
    human = grounder(config)
    assert human.ground_noun(records[1], "saucer").reason == "category_verified_absent"
    assert human.ground_noun(records[1], "tripod").reason == "category_not_verified_in_image"
    assert human.ground_noun(records[3], "tripod").reason == "image_not_in_lvis"
    assert human.ground_noun(records[1], "portrait").reason == "no_human_category"
    # COCO (tried first) says its category is absent; LVIS leaves dog unverified in image 2
    assert human.ground_noun(records[2], "dog").reason == "category_not_annotated_in_image"
    # the hybrid asks the detector only about what the annotations leave open
    assert human.ground_covered(records[1], "saucer") is not None
    assert human.ground_covered(records[1], "tripod") is None and human.ground_covered(records[1], "portrait") is None


def test_hypernyms_union_annotated_members_across_sources(scene):
    config, records = scene
    human = grounder(config)
    animals = human.ground_noun(records[1], "animals")
    assert animals.category == "animal" and animals.source == "coco_annotations+lvis_annotations"
    assert pixels(animals) == 32 * 48 and region(animals)[:, :32].all()
    farm = human.ground_noun(records[1], "farm animals")  # through the head word
    assert farm.category == "animal" and pixels(farm) == 32 * 48
    assert human.ground_noun(records[1], "dog").category == "dog"  # a category beats the hypernym
    assert human.ground_noun(records[2], "animal").reason == "category_not_annotated_in_image"
    furniture = human.ground_noun(records[1], "furniture")  # LVIS table (not exhaustive) + Stuff table
    assert furniture.source == "lvis_annotations_not_exhaustive+stuff_annotations"


def test_curated_tables_are_checked(tmp_path):
    table = HumanNounTable()
    assert table.nouns["street"].name == "road" and "lvis:dog" in {f"{m.source}:{m.name}" for m in table.hypernyms["animal"]}
    bad = tmp_path / "nouns.csv"
    bad.write_text("noun,target\nwidget,lvis:no_such_category\n")
    with pytest.raises(ValueError, match="no category 'no_such_category'"):
        HumanNounTable(bad)
    bad.write_text("noun,target\nsky,stuff:other\n")
    with pytest.raises(ValueError, match="stuff has no category 'other'"):
        HumanNounTable(bad)
    # a hypernym may stand for another one defined above it
    assert table.hypernyms["herd"] == table.hypernyms["animal"]
    unions = tmp_path / "hypernyms.csv"
    unions.write_text("hypernym,members\nflock,hypernym:bird\nbird,coco:bird\n")
    with pytest.raises(ValueError, match="hypernyms.csv:2: 'hypernym:bird' names no hypernym defined above it"):
        HumanNounTable(hypernyms_path=unions)


def test_bad_lvis_annotation_and_foreign_categories(tmp_path):
    broken = lvis_ann(1, "flag", (40, 0, 48, 8))
    broken["segmentation"] = [[1.0, 2.0]]
    config = write_source(tmp_path / "a", [lvis_image(1)], [lvis_ann(1, "flag", (56, 0, 64, 8)), broken], [])
    source = read_source(config.source)
    assert any(p.reason == "bad_annotation" and "lvis_v1_val.json annotations[1]" in p.detail for p in source.problems)
    record = {r.image_id: r for r in source.records.values()}[1]
    assert grounder(config).ground_noun(record, "flag").reason == "bad_annotation"
    foreign = write_source(tmp_path / "b", [lvis_image(1)], [], [], lvis_categories=[{"id": 451, "name": "banner"}])
    with pytest.raises(SourceError, match="category 451 is 'banner' here but 'flag' in LVIS v1"):
        read_source(foreign.source)


def test_profiles_choose_the_grounding(scene, tmp_path):
    config, _ = scene
    assert isinstance(GROUNDING_BACKENDS["coco"].factory(config), HumanGrounder)
    coco_only = config.model_copy(update={"source": config.source.model_copy(update={"lvis_json": [], "stuff_json": []})})
    assert type(GROUNDING_BACKENDS["coco"].factory(coco_only)) is CocoAnnotationGrounder
    # the new fields leave the hash of a configuration without LVIS / Stuff files as it was
    content = coco_only.content_dict()
    assert "lvis_json" not in content["source"] and "human_order" not in content["grounding"]
    assert config.content_dict()["source"]["lvis_json"] == ["lvis_v1_val.json"]
    reordered = config.model_copy(update={"grounding": config.grounding.model_copy(update={"human_order": ["lvis"]})})
    assert reordered.config_hash() != config.config_hash()
    with pytest.raises(ValueError, match="each at most once"):
        BuildConfig.model_validate({**json.loads(config.model_dump_json()), "grounding": {"human_order": ["coco", "coco"]}})


@pytest.mark.slow
def test_coverage_bench_counts_each_level(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"annotations": [
        {"image_id": 1, "caption": "A dog on the grass next to a tripod."},
        {"image_id": 2, "caption": "Some animals in front of a kitchen."},
        {"image_id": 3, "caption": "Pieces of a rocket beside a poodle."}]}))
    out = tmp_path / "coverage.json"
    bench = Path(__file__).resolve().parents[3] / "bench" / "bench_noun_coverage.py"
    subprocess.run([sys.executable, str(bench), "--captions", str(captions), "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    # dog: COCO; tripod: LVIS; grass: Stuff; animals: hypernym; kitchen (a room) and poodle (a dog): the
    # WordNet tables; rocket: none; "front" and "pieces" (a plural) are stop-listed
    assert result["nouns_not_on_stop_list"] == 7 and result["stop_listed"] == 2
    assert {k: v["nouns"] for k, v in result["resolved"].items()} == {
        "coco": 1, "coco+lvis": 2, "coco+lvis+stuff": 3, "human": 4, "+wordnet": 6}
    assert result["top_unresolved"] == [["rocket", 1]]


def test_wordnet_tables_place_nouns_by_is_a():
    table = HumanNounTable()
    resolver = NounResolver(NounTable())
    poodle = resolver.resolve("poodles").per_source  # a dog: COCO's and LVIS's dog
    assert poodle == {"coco": (1, "dog"), "lvis": (1, LVIS["dog"]["id"])}
    assert resolver.resolve("baker").per_source["coco"][1] == "person"
    assert resolver.resolve("garage").per_source == {"stuff": (0, ("building-other",))}  # COCO-Stuff's catch-all
    assert resolver.resolve("noodles").per_source["stuff"][1] == ("food-other",)
    assert resolver.resolve("tulips").per_source["stuff"][1] == ("plant-other",)
    # body parts and places name no category: their first sense stops the search
    assert resolver.resolve("hair").per_source == {} and resolver.resolve("park").per_source == {}
    # the hand-written tables win: "sign" is LVIS's signboard by human_nouns.csv, whatever WordNet says
    assert resolver.resolve("sign").per_source["lvis"][1] == LVIS["signboard"]["id"]
    assert "kitchen" in table.hypernyms and "drink" in table.hypernyms
    assert {f"{m.source}:{m.name}" for m in table.hypernyms["bathroom"]} >= {"stuff:wall", "stuff:floor", "coco:toilet"}
    assert len(table.generated) > 10_000 and table.sha256 != HumanNounTable(include_generated=False).sha256


def test_most_specific_key_first_then_the_head(scene):
    config, records = scene
    human = grounder(config)
    # the whole phrase's category first, then the head word's: "launch pad" is a platform before it is
    # LVIS's (writing) pad; "wall clock" falls back to COCO's clock when LVIS has no wall clock annotated
    resolution = human.resolver.resolve("launch pad")
    assert resolution.sources_in_order(["coco", "lvis", "stuff"]) == ["stuff", "lvis"]  # platform, then LVIS's pad
    assert human.resolver.resolve("wall clock").sources_in_order(["coco", "lvis", "stuff"])[-1] == "coco"
    # a room is the union of the image's walls, floors, tables...: here the table, grass is not part of it
    kitchen = human.ground_noun(records[1], "kitchen")
    assert kitchen.category == "kitchen" and "stuff_annotations" in kitchen.source
    assert region(kitchen)[24:30, 32:64].all() and not region(kitchen)[30:40, 32:64].any()


def test_generated_tables_are_checked(tmp_path):
    bad = tmp_path / "wordnet_nouns.csv"
    bad.write_text("noun,targets,sense,via\nwidget,lvis:dog;stuff:no_such,x.n.01,y.n.01\n")
    with pytest.raises(ValueError, match="wordnet_nouns.csv:2: stuff has no category 'no_such'"):
        HumanNounTable(wordnet_nouns=bad)
