import numpy as np
import pytest

from tokencompose.schemas.reasons import NounReason
from tokencompose.tasks.grounding import masks
from tokencompose.tasks.grounding.coco import CocoAnnotationGrounder, NounTable, lookup_keys, singular_forms
from tokencompose.schemas.records import Annotation, ImageRecord


@pytest.mark.parametrize("noun,category", [
    ("man", "person"), ("women", "person"), ("people", "person"), ("puppy", "dog"), ("puppies", "dog"),
    ("sofa", "couch"), ("television", "tv"), ("teddy bear", "teddy bear"), ("tabby cat", "cat"),
    ("coffee cup", "cup"), ("hot dogs", "hot dog"), ("knives", "knife"), ("buses", "bus"), ("Dog", "dog"),
])
def test_noun_table_maps_synonyms_plurals_and_heads(noun, category):
    assert NounTable().category(noun) == category


def test_nouns_outside_coco_have_no_category():
    table = NounTable()
    assert table.category("rocket") is None and table.category("flag") is None


def test_lookup_tries_phrase_then_head():
    assert lookup_keys("hot dogs") == ["hot dogs", "hot dog", "hotdogs", "hotdog", "dogs", "dog"]
    assert lookup_keys("suit cases")[2:4] == ["suitcases", "suitcase"]  # a compound written open
    assert singular_forms("glass") == ["glass"]
    assert singular_forms("berries") == ["berries", "berry", "berrie"]
    assert singular_forms("veggies") == ["veggies", "veggy", "veggie"]  # the second: "cookies", "veggies"


def test_bad_noun_table_says_file_and_line(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("noun,category\nkitty,cat\npuppy,wolf\n")
    with pytest.raises(ValueError, match=r"table.csv:3"):
        NounTable(table)


def _record(annotations):
    return ImageRecord(1, "x.jpg", 20, 10, (), tuple(annotations))


def test_mask_is_union_of_the_category_instances():
    left = Annotation(17, [[0, 0, 5, 0, 5, 10, 0, 10]], (0, 0, 5, 10))
    right = Annotation(17, [[15, 0, 20, 0, 20, 10, 15, 10]], (15, 0, 5, 10))
    dog = Annotation(18, [[6, 0, 14, 0, 14, 10, 6, 10]], (6, 0, 8, 10))
    grounding = CocoAnnotationGrounder().ground_noun(_record([left, right, dog]), "kittens")
    mask = masks.decode(grounding.mask.model_dump())
    assert mask.shape == (10, 20)
    assert mask[:, :5].all() and mask[:, 15:].all() and not mask[:, 6:14].any()
    assert grounding.category == "cat" and len(grounding.boxes) == 2
    assert grounding.box == (0.0, 0.0, 20.0, 10.0)


def test_rle_segmentations_decode_too():
    full = np.zeros((10, 20), bool)
    full[2:5, 3:9] = True
    rle = masks.encode(full)
    crowd = Annotation(17, rle, (3, 2, 6, 3), iscrowd=1)
    grounding = CocoAnnotationGrounder().ground_noun(_record([crowd]), "cat")
    assert (masks.decode(grounding.mask.model_dump()) == full).all()


def test_reasons_for_nouns_without_a_mask():
    grounder = CocoAnnotationGrounder()
    assert grounder.ground_noun(_record([]), "rocket").reason == NounReason.NO_COCO_CATEGORY
    assert grounder.ground_noun(_record([]), "dog").reason == NounReason.CATEGORY_NOT_ANNOTATED
    no_instances = CocoAnnotationGrounder(has_instances=False)
    assert no_instances.ground_noun(_record([]), "dog").reason == NounReason.NO_INSTANCE_ANNOTATIONS


def test_a_malformed_instance_of_the_category_gives_bad_annotation_not_a_partial_mask():
    good = Annotation(17, [[0, 0, 5, 0, 5, 10, 0, 10]], (0, 0, 5, 10))
    broken = Annotation(17, None, (0, 0, 0, 0), id=7, problem="polygon 0 has 4 numbers")
    grounder = CocoAnnotationGrounder()
    assert grounder.ground_noun(_record([good, broken]), "cat").reason == NounReason.BAD_ANNOTATION
    hostile = Annotation(17, {"size": [10, 20], "counts": "zz"}, (0, 0, 0, 0))  # never validated by a loader
    assert grounder.ground_noun(_record([good, hostile]), "cat").reason == NounReason.BAD_ANNOTATION
    assert grounder.ground_noun(_record([good, broken]), "dog").reason == NounReason.CATEGORY_NOT_ANNOTATED


@pytest.mark.parametrize("noun,category", [
    ("cat\u200b", "cat"), ("c\u00adat", "cat"), ("\u202ecat\u202c", "cat"), ("\ufeffdogs", "dog"),
    ("\uff43\uff41\uff54", "cat"), ("teddy\u00a0bear", "teddy bear"),
])
def test_lookups_ignore_invisible_characters_and_width_forms(noun, category):
    assert NounTable().category(noun) == category
