"""exclude_flagged: training skips the samples a flags file (the viewer's flags.jsonl) flags, counted as
'flagged' and never against the bad-data ceiling, and skips only the token loss of a flagged noun."""
from __future__ import annotations

import json

import pytest
from transformers import CLIPTokenizerFast

from tokencompose.schemas.curation import Exclusions, read_exclusions
from tokencompose.tasks.curation.store import FlagStore
from tokencompose.tasks.models.preflight import train_problems
from tokencompose.tasks.shards.patterns import expand_shards
from tokencompose.tasks.training.data import Preprocessor, make_loader
from tokencompose.tasks.training.samples import FLAGGED, DataQuality, Skip
from tokencompose.tasks.training.trainer import METRICS_FILE, Trainer
from tests.support.training_kit import RESOLUTION, photo_samples


@pytest.fixture
def flags(tmp_path):
    """The first photo's 'cat' mask (noun 0) and the whole second photo flagged."""
    samples = photo_samples()
    store = FlagStore(tmp_path)
    store.flag(samples[0][0].key, "the cat's mask is a box", noun=0, noun_text="cat")
    store.flag(samples[1][0].key, "not a photo of what the caption says")
    return store, [record for record, _ in samples]


def test_the_stream_skips_flagged_samples_and_flagged_nouns(flags, shard_dir, tiny_sd):
    store, records = flags
    tokenizer = CLIPTokenizerFast.from_pretrained(tiny_sd / "tokenizer")
    urls = expand_shards([str(shard_dir / "shard-*.tar")])
    batches = {}
    for name, exclusions in (("plain", Exclusions()), ("flagged", read_exclusions(store.path))):
        preprocess = Preprocessor(tokenizer, RESOLUTION, (8,), exclusions=exclusions)
        loader = make_loader(urls, preprocess, batch_size=len(records) - 1, num_workers=0, seed=0, shuffle_buffer=0)
        batches[name] = next(iter(loader))
    plain, flagged = batches["plain"], batches["flagged"]
    assert records[1].key in plain.keys and records[1].key not in flagged.keys
    assert [(s.key, s.reason) for s in flagged.skipped] == [(records[1].key, FLAGGED)]
    assert flagged.stats["samples_flagged"] == 1 and flagged.stats["samples_skipped"] == 1
    assert plain.stats["samples_flagged"] == 0 and plain.stats["nouns_flagged"] == 0
    # the cat's token loss is skipped, the sample and its cup stay
    cat_row_plain, cat_row = plain.keys.index(records[0].key), flagged.keys.index(records[0].key)
    assert plain.noun_valid[cat_row_plain].sum() == 2 and flagged.noun_valid[cat_row].sum() == 1
    assert flagged.stats["nouns_flagged"] == 1


def test_flagged_samples_never_count_against_the_ceiling():
    quality = DataQuality(samples=10)
    for index in range(5):
        quality.add(Skip("shard-000000.tar", index, f"{index:012d}", FLAGGED, "flagged in flags.jsonl"))
    assert quality.ceiling_problem(0.0, 0) is None
    assert quality.summary()["unusable"] == 0 and quality.counts() == {FLAGGED: 5}
    quality.add(Skip("shard-000000.tar", 7, "000000000007", "corrupt_image", "broken"))
    assert "1 of 10 samples unusable" in quality.ceiling_problem(0.0, 0)


def test_training_with_a_flags_file_counts_the_skips_by_reason(flags, make_config, tmp_path):
    store, records = flags
    config = make_config(exclude_flagged=store.path, max_bad_sample_fraction=0.0, shuffle_buffer=0,
                         output_dir=tmp_path / "run", max_steps=2)
    assert train_problems(config) == []
    result = Trainer(config).train()
    assert result.steps == 2
    assert result.data_quality["by_reason"] == {FLAGGED: 1} and result.data_quality["unusable"] == 0
    assert result.stats["samples_flagged"] == 1 and result.stats["nouns_flagged"] == 1
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text().splitlines()[-1])
    assert record["count/samples_flagged"] == 1 and record["bad/flagged"] == 1 and record["bad/unusable"] == 0


def test_a_missing_or_bad_flags_file_stops_before_the_models_load(make_config, tmp_path):
    assert train_problems(make_config(exclude_flagged=tmp_path / "nope.jsonl")) == [
        f"exclude_flagged: {tmp_path / 'nope.jsonl'} does not exist"]
    bad = tmp_path / "flags.jsonl"
    bad.write_text('{"key": "x/y", "reason": "r", "flagged_at": "t"}\n')
    problems = train_problems(make_config(exclude_flagged=bad))
    assert len(problems) == 1 and problems[0].startswith(f"exclude_flagged: {bad}:1: not a Flag record (key:")
