"""Box-to-noun assignment by token positions, on crafted scores and a real (tiny) BERT tokenizer."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.paper_models import write_tiny_bert
from tokencompose.tasks.grounding.token_assignment import (assign_boxes, build_prompt, prompt_noun, select_boxes,
                                                 token_owners)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = write_tiny_bert(tmp_path_factory.mktemp("bert"))
    return AutoTokenizer.from_pretrained(str(folder))


def owners_for(tokenizer, nouns):
    prompt = build_prompt(nouns)
    encoded = tokenizer(prompt.text, return_offsets_mapping=True)
    return prompt, encoded, token_owners(encoded["offset_mapping"], prompt.spans)


def scores_on(encoded, hot: dict[int, float], base: float = 0.05) -> np.ndarray:
    row = np.full(len(encoded["input_ids"]), base)
    for position, value in hot.items():
        row[position] = value
    return row


def positions_of(prompt, encoded, noun_index: int) -> list[int]:
    start, end = prompt.spans[noun_index]
    return [t for t, (s, e) in enumerate(encoded["offset_mapping"]) if e > s and start <= s and e <= end]


def test_prompt_form_is_lower_case_dot_separated():
    prompt = build_prompt(["Teddy Bear", "Man", "hot  dog", "st. bernard"])
    assert prompt.text == "teddy bear . man . hot dog . st bernard ."
    assert [prompt.text[s:e] for s, e in prompt.spans] == ["teddy bear", "man", "hot dog", "st bernard"]
    assert prompt_noun("A.B?c") == "a b c"


def test_repeated_nouns_share_one_prompt_entry():
    prompt = build_prompt(["dog", "Dog", "cat", "dog", "..."])
    assert prompt.nouns == ("dog", "cat")
    assert prompt.noun_index == (0, 0, 1, 0, -1)
    assert build_prompt([]).text == ""


def test_owners_cover_every_subword_and_skip_separators(tokenizer):
    prompt, encoded, owners = owners_for(tokenizer, ["woman", "hot dog", "zebra"])
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and owners[0] == -1 and owners[-1] == -1
    assert all(owners[t] == -1 for t, tok in enumerate(tokens) if tok == ".")
    assert len(positions_of(prompt, encoded, 2)) > 1  # "zebra" is not in the tiny vocabulary: word pieces
    for noun in range(3):
        assert all(owners[t] == noun for t in positions_of(prompt, encoded, noun))


def test_man_does_not_take_womans_box(tokenizer):
    # The authors matched phrase text by substring, so a box on "woman" also went to "man".
    prompt, encoded, owners = owners_for(tokenizer, ["man", "woman"])
    woman = positions_of(prompt, encoded, 1)
    man = positions_of(prompt, encoded, 0)
    scores = np.stack([scores_on(encoded, {t: 0.9 for t in woman}), scores_on(encoded, {t: 0.8 for t in man})])
    assert assign_boxes(scores, owners, 0.25).tolist() == [1, 0]


def test_dog_and_hot_dog_are_told_apart_by_position(tokenizer):
    prompt, encoded, owners = owners_for(tokenizer, ["dog", "hot dog"])
    dog, hot_dog = positions_of(prompt, encoded, 0), positions_of(prompt, encoded, 1)
    assert len(dog) == 1 and len(hot_dog) == 2
    # the word "dog" of "hot dog" lights up: that box is the hot dog's, not the dog's
    only_second_dog = scores_on(encoded, {hot_dog[1]: 0.7})
    both = scores_on(encoded, {dog[0]: 0.3, hot_dog[0]: 0.6, hot_dog[1]: 0.9})
    first_dog = scores_on(encoded, {dog[0]: 0.8, hot_dog[1]: 0.4})
    assert assign_boxes(np.stack([only_second_dog, both, first_dog]), owners, 0.25).tolist() == [1, 1, 0]


def test_threshold_separators_and_ties():
    owners = np.array([-1, 0, -1, 1, 1, -1, -1])  # [CLS] a . b c . [SEP]
    scores = np.array([
        [0.9, 0.1, 0.95, 0.1, 0.1, 0.9, 0.9],  # only special tokens are high: no noun
        [0.0, 0.25, 0.0, 0.2, 0.0, 0.0, 0.0],  # equal to the threshold is not above it
        [0.0, 0.6, 0.0, 0.6, 0.1, 0.0, 0.0],  # tie: the earlier noun
        [0.0, 0.3, 0.0, 0.1, 0.5, 0.0, 0.0],  # best single token wins
    ])
    assert assign_boxes(scores, owners, 0.25).tolist() == [-1, -1, 0, 1]
    assert assign_boxes(np.zeros((0, 7)), owners, 0.25).tolist() == []


def test_padding_positions_beyond_the_prompt_own_nothing():
    owners = np.array([-1, 0, -1, -1])
    scores = np.zeros((1, 256))
    scores[0, 100] = 0.99  # a padded position (the detector pads to 256 with -inf; never trust it)
    assert assign_boxes(scores, owners, 0.25).tolist() == [-1]
    scores[0, 1] = 0.5
    assert assign_boxes(scores, owners, 0.25).tolist() == [0]


def test_select_boxes_uses_the_best_token():
    scores = np.array([[0.1, 0.3], [0.2, 0.24], [0.26, 0.0]])
    assert select_boxes(scores, 0.25).tolist() == [0, 2]
    assert select_boxes(np.zeros((0, 4)), 0.25).tolist() == []
