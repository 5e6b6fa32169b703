from tokencompose.tasks.captions.ranking import ConsensusRanker, choose, usable_captions
from tokencompose.schemas.records import Caption


def test_consensus_prefers_the_caption_the_others_agree_with():
    captions = ["A cat sleeping on a red sofa.", "A cat on a sofa.", "A sleeping cat on the couch.",
                "Sunset over the harbour with boats."]
    scores = ConsensusRanker().score([None], [captions])[0]
    assert len(scores) == 4
    assert choose(scores) in (0, 1)
    assert scores[3] == min(scores)


def test_scores_are_deterministic_and_batched_like_one_by_one():
    batch = [["a dog", "a dog on grass", "grass"], ["a red bus", "a bus"]]
    ranker = ConsensusRanker()
    assert ranker.score([None, None], batch) == [ranker.score([None], [b])[0] for b in batch]


def test_ties_go_to_the_first_caption():
    assert choose([0.5, 0.5, 0.1]) == 0


def test_single_caption_scores_one():
    assert ConsensusRanker().score([None], [["only one"]]) == [[1.0]]


def test_empty_and_long_captions_are_excluded_with_a_reason():
    kept, excluded = usable_captions([Caption(1, "  "), Caption(2, "x" * 50), Caption(3, " A dog. ")], max_chars=20)
    assert kept == [Caption(3, "A dog.")]
    assert [(c.id, why) for c, why in excluded] == [(1, "empty"), (2, "longer than 20 characters")]
