"""flair POS tagging through a small SequenceTagger trained here: offsets, batching, phrase contract."""
from __future__ import annotations

import pytest

from tests.support.paper_models import build_models_dir
from tokencompose.tasks.nouns.flair_tagger import FlairTagger, align_tokens
from tokencompose.tasks.nouns.extraction import NounExtractor, TaggedToken, merge_noun_phrases

CAPTIONS = ["a man riding a horse .", "A teddy bear on the bed.", "  a woman holding a cup of coffee .",
            "a cup and a spoon on a plate", "", "a hot dog on a plate ."]


@pytest.fixture(scope="module")
def tagger():
    return FlairTagger(build_models_dir() / "flair" / "pos-english" / "pytorch_model.bin", batch_size=2,
                       device="cpu")


@pytest.mark.paper_size
def test_tokens_carry_offsets_into_the_caption(tagger):
    for caption, tokens in zip(CAPTIONS, tagger.tag(CAPTIONS)):
        assert all(caption[t.start:t.end] == t.text for t in tokens)
        assert [t.start for t in tokens] == sorted(t.start for t in tokens)
        assert "".join(t.text for t in tokens) == "".join(caption.split())
    assert tagger.tag([""]) == [[]]


@pytest.mark.paper_size
def test_batch_equals_one_by_one(tagger):
    assert tagger.tag(CAPTIONS) == [tagger.tag([c])[0] for c in CAPTIONS]


@pytest.mark.paper_size
def test_trained_tags_give_the_phrase_contract(tagger):
    extractor = NounExtractor(tagger)
    phrases = extractor.extract(["a man riding a horse .", "a teddy bear on the bed ."])
    assert [[p.text for p in image] for image in phrases] == [["man", "horse"], ["teddy bear", "bed"]]
    for caption, image in zip(["a man riding a horse .", "a teddy bear on the bed ."], phrases):
        assert all(caption[p.start:p.end] == p.text for p in image)


@pytest.mark.paper_size
def test_info_names_the_model(tagger):
    info = tagger.info()
    assert info.name == "flair" and info.details["label_type"] == "pos"
    assert info.details["weights"] == "pytorch_model.bin"


def test_align_tokens_repairs_offsets():
    tokens = align_tokens("two  dogs, one cat", [("two", 0, "CD"), ("dogs", 4, "NNS"), (",", 9, ","),
                                                 ("one", 11, "CD"), ("cat", 99, "NN"), ("@@", 0, "SYM")])
    assert tokens == [TaggedToken("two", 0, 3, "CD"), TaggedToken("dogs", 5, 9, "NNS"), TaggedToken(",", 9, 10, ","),
                      TaggedToken("one", 11, 14, "CD"), TaggedToken("cat", 15, 18, "NN")]
    assert [p.text for p in merge_noun_phrases("two  dogs, one cat", tokens)] == ["dogs", "cat"]
