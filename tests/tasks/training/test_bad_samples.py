"""Training never dies of a sample: every way a sample breaks the data contract is skipped and
counted by reason, a ceiling stops the run with the worst shards named (before any step when the
pre-scan can tell), and a resumed run continues past what was skipped with the counts it had."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizerFast

from tokencompose.schemas.config import ImageLimits
from tokencompose.tasks.training.data import Preprocessor, ShardStream
from tokencompose.tasks.training.samples import DUPLICATE_KEY, DataQuality, TooMuchBadData, read_shard, scan_shards
from tokencompose.tasks.training.trainer import CHECKPOINTS_DIR, METRICS_FILE, Trainer
from tests.support.hostile_shards import MAKERS, PRESCAN_BLIND, members, small_photo_samples, truncate, write_samples

REASONS = sorted(MAKERS)
RESOLUTION = 64


@pytest.fixture(scope="module")
def good():
    return small_photo_samples(240)


def shard(tmp_path: Path, index: int, samples) -> Path:
    return write_samples(tmp_path / "shards" / f"shard-{index:06d}.tar", samples)


def one_of_each(good) -> list:
    return [MAKERS[reason](*good[i]) for i, reason in enumerate(REASONS)]


def stream_skips(tokenizer, urls, duplicates, limit: int) -> Counter:
    """Reasons of every skip one epoch of the stream reports (its examples carry them)."""
    stream = ShardStream(urls, Preprocessor(tokenizer, RESOLUTION, (8,)), shuffle_buffer=0, duplicates=duplicates)
    found: Counter = Counter()
    for example, _ in zip(stream, range(limit)):
        found.update(skip.reason for skip in example.skipped)
    return found


# ---- the checks, the pre-scan and the stream, without a model --------------------------------------

def test_the_prescan_finds_every_reason_but_undecoded_pixels(tmp_path, good):
    first = shard(tmp_path, 0, [members(*s) for s in good[20:24]] + one_of_each(good))
    second = shard(tmp_path, 1, [members(*good[20]), members(*good[30]), members(*good[30])])
    scan = scan_shards([str(first), str(second)], None, ImageLimits())
    found = Counter(p.reason for s in scan.shards for p in s.problems)
    assert found == Counter({**{r: 1 for r in REASONS if r not in PRESCAN_BLIND}, DUPLICATE_KEY: 2})
    assert scan.samples == 4 + len(REASONS) + 3 and scan.readable == [str(first), str(second)]
    # the later occurrence is the duplicate: good[20] in the second shard, good[30]'s second copy
    assert sorted(scan.duplicates) == [(str(second), 0), (str(second), 2)]


def test_a_damaged_tar_is_unreadable_wherever_it_breaks(tmp_path, good):
    samples = [members(*s) for s in good[:6]]
    cut = truncate(shard(tmp_path, 0, samples))
    garbled = shard(tmp_path, 1, samples)
    data = bytearray(garbled.read_bytes())
    header = data.index(good[3][0].key.encode() + b".jpg")          # the fourth sample's first header
    data[header:header + 100] = b"\x07" * 100
    garbled.write_bytes(bytes(data))
    no_tar = tmp_path / "shards" / "shard-000002.tar"
    no_tar.write_bytes(b"not a tar at all" * 64)
    scan = scan_shards([str(cut), str(garbled), str(no_tar)], None, ImageLimits())
    assert scan.readable == [] and all(s.unreadable for s in scan.shards)
    assert "damaged tar header" in scan.shards[1].unreadable
    for path in (cut, garbled):
        with pytest.raises(Exception, match=path.name):
            list(read_shard(str(path)))


def test_the_stream_skips_and_reports_every_reason(tmp_path, good, tiny_sd):
    tokenizer = CLIPTokenizerFast.from_pretrained(tiny_sd / "tokenizer")
    first = shard(tmp_path, 0, [members(*good[50])] + one_of_each(good))
    second = shard(tmp_path, 1, [members(*good[50]), members(*good[51])])
    urls = [str(first), str(second)]
    scan = scan_shards(urls, None, ImageLimits())
    # two good samples per epoch: the third example comes after every skip of the first epoch
    found = stream_skips(tokenizer, urls, scan.duplicates, limit=3)
    assert found == Counter({**{r: 1 for r in REASONS}, DUPLICATE_KEY: 1})


# ---- a tiny model training on hostile shards --------------------------------------------------------

def hostile_shards(root: Path, plan: list[list[str]], good) -> tuple[list[Path], Counter]:
    """Shards from a plan (per shard, per sample: 'good', 'duplicate' of the first sample, or a
    reason); returns them and the expected count of unusable samples by reason."""
    paths: list[Path] = []
    expected: Counter = Counter()
    used = iter(good)
    first = None
    for index, kinds in enumerate(plan):
        samples = []
        for kind in kinds:
            record, image = next(used)
            if kind == "good":
                samples.append(members(record, image))
                first = first or (record, image)
            elif kind == "duplicate":
                assert first is not None, "the plan starts with a good sample"
                samples.append(members(*first))
                expected[DUPLICATE_KEY] += 1
            else:
                samples.append(MAKERS[kind](record, image))
                expected[kind] += 1
        paths.append(write_samples(root / f"shard-{index:06d}.tar", samples))
    return paths, expected


def tiny_run(make_config, out: Path, shards, good_count: int, **overrides):
    """One step whose batch is one more than the good samples: the stream goes once round every shard."""
    return make_config(shards=[str(p) for p in shards], output_dir=out, train_batch_size=good_count + 1,
                       shuffle_buffer=0, max_steps=1, **overrides)


kinds = st.sampled_from(["good", "good", "good", "duplicate", *REASONS])


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=st.lists(st.lists(kinds, min_size=1, max_size=4), min_size=1, max_size=3), cut_one=st.booleans())
def test_hostile_shards_train_below_the_ceiling_and_stop_above_it(plan, cut_one, good, make_config, tmp_path_factory):
    plan[0].insert(0, "good")
    root = tmp_path_factory.mktemp("hostile")
    shards, expected = hostile_shards(root, plan, good)
    if cut_one:
        shards.append(truncate(write_samples(root / "shard-000009.tar", [members(*s) for s in good[200:204]])))
    total, bad = sum(map(len, plan)), sum(expected.values())
    good_count = total - bad
    at_ceiling = tiny_run(make_config, root / "run", shards, good_count, max_bad_sample_fraction=bad / total,
                          max_unreadable_shards=int(cut_one))
    result = Trainer(at_ceiling).train()
    assert result.steps == 1 and result.data_quality["by_reason"] == dict(expected)
    assert len(result.data_quality["unreadable_shards"]) == int(cut_one)
    record = json.loads((root / "run" / METRICS_FILE).read_text().splitlines()[-1])
    assert {k[4:]: v for k, v in record.items()
            if k.startswith("bad/") and k not in ("bad/unusable", "bad/unreadable_shards")} == dict(expected)
    if bad:
        below = tiny_run(make_config, root / "stopped", shards, good_count, max_bad_sample_fraction=(bad - 0.5) / total,
                         max_unreadable_shards=int(cut_one))
        with pytest.raises(TooMuchBadData) as stopped:
            Trainer(below).train()
        worst = max(range(len(plan)), key=lambda i: (sum(k != "good" for k in plan[i]), -i))
        assert f"shard-{worst:06d}.tar" in str(stopped.value)
    if cut_one:
        with pytest.raises(TooMuchBadData, match="shard-000009.tar"):
            Trainer(tiny_run(make_config, root / "strict", shards, good_count, max_bad_sample_fraction=1.0))


def test_the_ceiling_stops_before_the_models_load_naming_the_worst_shards(tmp_path, good, make_config):
    a = shard(tmp_path, 0, [members(*s) for s in good[:8]] + [MAKERS["json_not_object"](*good[8])])
    b = shard(tmp_path, 1, [members(*s) for s in good[10:14]] + [MAKERS["missing_image"](*s) for s in good[14:16]])
    config = make_config(shards=[str(a), str(b)], output_dir=tmp_path / "run", max_bad_sample_fraction=0.1)
    with pytest.raises(TooMuchBadData) as stopped:
        Trainer(config)
    message = str(stopped.value)
    assert "\n" not in message and "3 of 15 samples unusable" in message
    assert message.index("shard-000001.tar (2 unusable: missing_image 2)") < message.index("shard-000000.tar")
    assert not (tmp_path / "run").exists(), "stopped before anything was written"


def test_undecodable_pixels_past_the_ceiling_stop_the_run_while_training(tmp_path, good, make_config):
    samples = [members(*s) for s in good[:6]] + [MAKERS["corrupt_image"](*s) for s in good[6:8]]
    config = make_config(shards=[str(shard(tmp_path, 0, samples))], output_dir=tmp_path / "run", shuffle_buffer=0,
                         max_steps=20, max_bad_sample_fraction=0.2)
    trainer = Trainer(config)  # the pre-scan cannot see them
    with pytest.raises(TooMuchBadData, match=r"2 of 8 samples unusable .*shard-000000.tar \(2 unusable: corrupt_image 2\)"):
        trainer.train()
    assert trainer.state.step == 6, "stops at the step that met the second one"


# ---- the holes of issue 20: each failed before (DataError from the first bad sample) -------------------

def one_bad_among_many(tmp_path: Path, good, reason: str, position: int = 0) -> Path:
    """100 good samples and one bad one (under the default 1% ceiling), in shard order."""
    samples = [members(*s) for s in good[:100]]
    samples.insert(position, MAKERS[reason](*good[100]))
    return shard(tmp_path, 0, samples)


@pytest.mark.parametrize("reason", ["json_not_object", "corrupt_image", "missing_image", "mask_size_mismatch",
                                    "span_mismatch"])
def test_one_bad_sample_does_not_stop_training(reason, tmp_path, good, make_config):
    path = one_bad_among_many(tmp_path, good, reason)
    config = make_config(shards=[str(path)], output_dir=tmp_path / "run", shuffle_buffer=0, max_steps=2)
    result = Trainer(config).train()
    assert result.steps == 2 and result.stats["samples"] == 2
    assert result.data_quality["by_reason"] == {reason: 1}
    assert result.data_quality["first"][reason] == [f"shard-000000.tar:{good[100][0].key}"]
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text().splitlines()[-1])
    assert record[f"bad/{reason}"] == 1 and record["bad/unusable"] == 1 and record["count/samples_skipped"] == 1


def unet_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.unet).state_dict().items()}


@pytest.mark.slow
def test_resume_continues_past_skipped_samples_with_their_counts(tmp_path, good, make_config):
    """Two readers, two shards, a bad sample in each on both sides of the checkpoint: the resumed run
    ends where the uninterrupted one does, with the same weights, counts and ledger."""
    first = [members(*s) for s in good[:100]]
    first.insert(1, MAKERS["corrupt_image"](*good[200]))      # met by its reader's 2nd example
    second = [members(*s) for s in good[100:200]]
    second.insert(3, MAKERS["json_not_object"](*good[201]))   # by the 4th: after the checkpoint
    shards = [str(shard(tmp_path, 0, first)), str(shard(tmp_path, 1, second))]
    common = dict(shards=shards, num_workers=2, shuffle_buffer=0, checkpoint_every=3, learning_rate=1e-4,
                  token_weight=1.0)
    straight = Trainer(make_config(max_steps=8, output_dir=tmp_path / "straight", **common))
    straight.train()
    Trainer(make_config(max_steps=3, output_dir=tmp_path / "resumed", **common)).train()
    resumed = Trainer(make_config(max_steps=8, output_dir=tmp_path / "resumed", **common))
    assert resumed.state.step == 3
    result = resumed.train()
    assert result.data_quality["by_reason"] == {"json_not_object": 1, "corrupt_image": 1}
    assert resumed.state.stats == straight.state.stats and resumed.state.positions == straight.state.positions
    assert resumed.quality.to_dict() == straight.quality.to_dict()
    for name, value in unet_state(straight).items():
        torch.testing.assert_close(unet_state(resumed)[name], value, rtol=0, atol=0)
    saved = json.loads((tmp_path / "resumed" / CHECKPOINTS_DIR / "step-00000008" / "trainer_state.json").read_text())
    assert DataQuality.from_dict(saved["quality"]).counts() == {"json_not_object": 1, "corrupt_image": 1}
