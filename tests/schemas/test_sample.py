import pytest
from pydantic import ValidationError

from tokencompose.schemas.sample import Noun, sample_key


def test_noun_needs_a_mask_or_a_reason():
    with pytest.raises(ValidationError):
        Noun(text="cat", span=(0, 3))
    assert Noun(text="cat", span=(0, 3), reason="no_coco_category").mask is None


def test_keys_have_no_dots():
    assert sample_key(139) == "000000000139"
