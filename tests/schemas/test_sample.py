import pytest
from pydantic import ValidationError

from tokencompose.schemas.sample import CocoRLE, Grounding, Noun, sample_key


def test_noun_needs_a_mask_or_a_reason():
    with pytest.raises(ValidationError):
        Noun(text="cat", span=(0, 3))
    assert Noun(text="cat", span=(0, 3), reason="no_coco_category").mask is None


def test_a_noun_is_its_grounders_result_with_text_and_span():
    grounding = Grounding(mask=CocoRLE(size=(2, 3), counts="06"), box=(0, 0, 3, 2), score=0.5,
                          boxes=[(0, 0, 3, 2)], box_scores=[0.5], category="cat", source="grounded_sam")
    noun = Noun.grounded("cat", (4, 7), grounding)
    assert set(Noun.model_fields) == set(Grounding.model_fields) | {"text", "span"}
    assert noun.model_dump(exclude={"text", "span"}) == grounding.model_dump()
    assert (noun.text, noun.span) == ("cat", (4, 7))


def test_a_grounding_names_a_source_only_for_a_mask():
    with pytest.raises(ValidationError, match="either a mask or a reason"):
        Grounding(mask=CocoRLE(size=(1, 1), counts="01"), reason="empty_mask")
    with pytest.raises(ValidationError, match="source 'grounded_sam' names what made a mask"):
        Grounding(reason="empty_mask", source="grounded_sam")


def test_keys_have_no_dots():
    assert sample_key(139) == "000000000139"
