"""The paper's prompt files, the prompt-file checks and the seeded sampler."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tokencompose.tasks.multigen import prompts as mp


@pytest.mark.parametrize("name, categories", [("coco", 80), ("ade20k", 100)])
def test_the_papers_prompt_files_load_with_their_category_counts(name, categories):
    prompts = mp.bundled(name)
    assert len(prompts) == 1000 and len({p.id for p in prompts}) == 1000
    assert len({c for p in prompts for c in p.categories}) == categories
    assert all(len(set(p.categories)) == 5 for p in prompts)
    # the authors always wrote "a", before vowels too
    assert all(p.text == mp.prompt_text(p.categories) for p in prompts)


def test_the_bundled_files_carry_their_attribution():
    notice = (mp.MULTIGEN_DIR / "NOTICE").read_text()
    assert "mlpc-ucsd/TokenCompose" in notice and "5633f81" in notice and "Apache License" in notice
    assert "Apache License" in (mp.MULTIGEN_DIR / "LICENSE-Apache-2.0.txt").read_text()
    assert (mp.BUNDLED["coco"].parent / "README.md").exists()


def test_category_spans_point_into_the_text():
    prompt = mp.bundled("coco")[1]
    assert [prompt.text[a:b] for a, b in prompt.spans()] == list(prompt.categories)


def write(tmp_path, rows, name="prompts.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def row(uid, cats, text=None):
    data = {"unique_id": uid, "num_objects": len(cats)}
    data.update({f"obj_{k}_attributes": [c] for k, c in enumerate(cats, 1)})
    data["text"] = text if text is not None else mp.prompt_text(cats)
    return data


GOOD = ["cat", "dog", "cup", "car", "bus"]


@pytest.mark.parametrize("bad, message", [
    (row(1, ["cat", "dog", "cup", "car"]), "4 categories, MultiGen prompts have 5"),
    (row(1, ["cat", "dog", "cup", "cat", "bus"]), "repeated categories ['cat']"),
    (row(1, GOOD, text="a photo of things"), "is not the MultiGen template"),
    ({"unique_id": 1, "obj_1_attributes": "cat"}, "missing text"),
    ("a photo of a cat", "expected an object"),
    (row(0, ["cow", "dog", "cup", "car", "bus"]), "unique_id 0 repeats row 0"),
])
def test_a_bad_row_is_named_with_file_and_row(tmp_path, bad, message):
    path = write(tmp_path, [row(0, GOOD), bad])
    with pytest.raises(mp.PromptFileError) as error:
        mp.load_prompts(path)
    assert str(path) in str(error.value) and "row 1" in str(error.value) and message in str(error.value)


def test_a_file_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(mp.PromptFileError, match="broken.json: not valid JSON"):
        mp.load_prompts(path)


def test_the_sampler_is_seeded_distinct_and_uses_the_template():
    names = [c for c in sorted({c for p in mp.bundled("coco") for c in p.categories})]
    first = mp.sample_prompts(names, 200, seed=3)
    assert first == mp.sample_prompts(names, 200, seed=3)
    assert first != mp.sample_prompts(names, 200, seed=4)
    assert all(len(set(p.categories)) == 5 and set(p.categories) <= set(names) for p in first)
    assert all(p.text == mp.prompt_text(p.categories) for p in first)
    # the same prompts in another Python process (no dependence on hash randomisation)
    code = ("import json; from tokencompose.tasks.multigen.prompts import sample_prompts as s; "
            f"print(json.dumps([p.text for p in s({names!r}, 200, seed=3)]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert json.loads(other.stdout) == [p.text for p in first]


def test_the_sampler_can_write_an_before_vowels(tmp_path):
    prompts = mp.sample_prompts(["apple", "elephant", "umbrella", "dog", "oven", "cup"], 20, seed=0,
                                correct_articles=True)
    assert any("an apple" in p.text for p in prompts) and all("a apple" not in p.text for p in prompts)
    assert all("an dog" not in p.text for p in prompts)
    # a sampled set round-trips through the authors' file format and the checks
    assert mp.load_prompts(mp.write_prompts(prompts, tmp_path / "set.json")) == prompts


def test_the_sampler_needs_five_distinct_categories(tmp_path):
    with pytest.raises(ValueError, match="at least 5 distinct"):
        mp.sample_prompts(["a", "b", "c", "d", "d"], 3)
    path = tmp_path / "cats.txt"
    path.write_text("cat\ndog\n# comment\n\ncat\n")
    with pytest.raises(mp.PromptFileError, match="repeated categories"):
        mp.read_categories(path)
