"""Prompts and categories are checked before any generation: encodable, non-empty, within the text
encoder's window (CLIP: 77 tokens) and the detector's query window (OWLv2: 16), named by file and row."""
from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencompose.tasks.multigen import prompts as mp
from tokencompose.tasks.multigen.run import EvaluationError, evaluate_models, preflight

BOUNDED = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEMPLATE = "a photo of a {category}"


def row(uid, categories, text=None):
    data: dict = {"unique_id": uid, "num_objects": len(categories)}
    data.update({f"obj_{k}_attributes": [c] for k, c in enumerate(categories, 1)})
    data["text"] = text if text is not None else mp.prompt_text(categories)
    return data


GOOD = ["cat", "dog", "cup", "car", "bus"]
LONG = "very large and extremely heavy old wooden kitchen table with two drawers"  # an 18-token query


@pytest.fixture(scope="module")
def tokenizers(tiny_sd, tiny_owl):
    from transformers import AutoTokenizer

    return (AutoTokenizer.from_pretrained(tiny_sd / "tokenizer", local_files_only=True),
            AutoTokenizer.from_pretrained(tiny_owl, local_files_only=True))


def test_a_category_longer_than_the_detectors_window_stops_the_run_before_work(make_eval_config, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([row(0, GOOD), row(1, ["cat", LONG, "cup", "car", "bus"])]))
    config = make_eval_config(benchmark={"file": str(path), "limit": None})
    with pytest.raises(EvaluationError) as error:
        evaluate_models(config)
    assert (f"{path}: row 1: category {LONG!r} makes the detector query 'a photo of a {LONG}' 18 tokens, the "
            f"detector's text window is 16") in str(error.value)
    assert not config.out_dir.exists()


def test_a_text_longer_than_the_text_encoders_window_is_named(make_eval_config, tmp_path):
    # queries of the bare category fit OWLv2's 16 tokens; five of them make a text of more than 77
    words = ["red", "green", "blue", "black", "white", "brown", "pink", "gray", "gold", "silver", "tiny", "huge", "dark"]
    categories = [" ".join(words[k:] + words[:k]) for k in range(5)]
    path = tmp_path / "long.json"
    path.write_text(json.dumps([row(7, categories)]))
    config = make_eval_config(benchmark={"file": str(path), "limit": None},
                              detection={"query_template": "{category}"})
    with pytest.raises(EvaluationError, match=rf"{path}: row 0: the text is 8\d tokens, the text encoder's window "
                                              rf"is 77"):
        preflight(config)


def test_sampled_prompts_name_the_categories_file(make_eval_config, tmp_path):
    names = tmp_path / "categories.txt"
    names.write_text("\n".join(GOOD + [LONG]) + "\n")
    config = make_eval_config(benchmark={"categories_file": str(names), "sample_count": 20, "limit": None})
    with pytest.raises(EvaluationError) as error:
        preflight(config)
    text = str(error.value)
    assert f"{names}: sampled prompt " in text and f"category {LONG!r} makes the detector query" in text
    assert text.count(LONG) == 2                                  # named once (in the message and its query)


@pytest.mark.parametrize("bad, message", [
    (row(1, ["cat", "dog\ud800", "cup", "car", "bus"]), "obj_2_attributes holds a string that cannot be encoded"),
    (row(1, GOOD, text=mp.prompt_text(GOOD) + "\udfff"), "text cannot be encoded as UTF-8"),
])
def test_unencodable_strings_are_named(tmp_path, bad, message):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([row(0, GOOD), bad]))                  # json escapes the lone surrogate
    with pytest.raises(mp.PromptFileError, match=rf"row 1: .*{message}"):
        mp.load_prompts(path)


def test_a_category_of_no_tokens_is_empty(tokenizers, tmp_path):
    text_tokenizer, query_tokenizer = tokenizers
    prompts = [mp.Prompt(0, mp.prompt_text(["\u3000", *GOOD[1:]]), ("\u3000", *GOOD[1:]), where="f.json: row 0")]
    assert mp.window_problems(prompts, text_tokenizer, 77, query_tokenizer, 16, TEMPLATE) == [
        "f.json: row 0: category '\\u3000' is no token for the text encoder (empty)"]


# -- hostile prompt files -----------------------------------------------------------------------

words = st.text(alphabet=st.sampled_from(string.ascii_lowercase + "éø "), min_size=1, max_size=12)
category = st.one_of(words, st.lists(words, min_size=1, max_size=8).map(" ".join),
                     st.text(min_size=0, max_size=30), st.just("\ud800"), st.just("   "))
hostile_row = st.one_of(
    st.lists(category, min_size=5, max_size=5, unique=True).map(lambda cats: ("template", cats)),
    st.lists(category, min_size=0, max_size=7).map(lambda cats: ("any", cats)),
    st.one_of(st.integers(), st.text(max_size=20), st.none()).map(lambda value: ("junk", value)))


def make_row(uid: int, kind: str, value):
    if kind == "junk":
        return value
    if kind == "template":
        try:
            return row(uid, value, mp.prompt_text([c.strip() for c in value]))
        except IndexError:
            return row(uid, value, "")
    return row(uid, value, "a photo of " + ", ".join(value))


@BOUNDED
@given(rows=st.lists(hostile_row, min_size=1, max_size=4))
def test_hostile_prompt_files_are_rejected_by_row_or_fit_both_windows(tokenizers, tiny_owl, tmp_path_factory, rows):
    """Whatever the file holds: one line naming the file and a real row, or prompts whose texts fit 77
    CLIP tokens and whose detector queries fit the 16 positions OWLv2's processor gives them."""
    from transformers import Owlv2Processor

    text_tokenizer, query_tokenizer = tokenizers
    path = tmp_path_factory.mktemp("hostile") / "prompts.json"
    path.write_text(json.dumps([make_row(uid, kind, value) for uid, (kind, value) in enumerate(rows)]))
    try:
        prompts = mp.load_prompts(path)
    except mp.PromptFileError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(f"{path}: row ")
        assert int(message.split(": row ")[1].split(":")[0]) < len(rows)
        return
    problems = mp.window_problems(prompts, text_tokenizer, 77, query_tokenizer, 16, TEMPLATE)
    for line in problems:
        assert "\n" not in line and line.startswith(f"{path}: row ")
    if problems:
        return
    processor = Owlv2Processor.from_pretrained(tiny_owl, local_files_only=True, use_fast=False)
    for prompt in prompts:
        assert len(text_tokenizer(prompt.text)["input_ids"]) <= 77
        queries = processor(text=[[TEMPLATE.format(category=c) for c in prompt.categories]], return_tensors="pt")
        assert queries["input_ids"].shape[-1] <= 16
