"""The paper and hybrid profiles end to end on the bundled sample, with random-weight models."""
from __future__ import annotations

import json

import pytest

from tests.support.paper_models import build_models_dir, calibrated_threshold, paper_settings, sample_images
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.sample import SampleRecord
from tokencompose.tasks.shards import dataset
from tokencompose.tasks.grounding.grounded_sam import GroundedSam
from tokencompose.tasks.grounding.token_assignment import build_prompt

pytestmark = pytest.mark.paper_size


@pytest.fixture(scope="module")
def threshold():
    models_dir = build_models_dir()
    probe = GroundedSam.from_config(BuildConfig.model_validate(paper_settings(models_dir, models_dir / "probe")))
    images = sample_images()
    return calibrated_threshold(probe, images, [build_prompt(["man", "cat", "cup", "dog"])] * len(images), 2.0)


def read_samples(out_dir):
    import tarfile

    records = []
    for shard in sorted((out_dir / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records.append(SampleRecord.model_validate_json(tar.extractfile(member).read()))
    return records


@pytest.mark.parametrize("profile", ["paper", "hybrid"])
def test_profile_builds_the_sample(tmp_path, threshold, profile):
    models_dir = build_models_dir()
    settings = paper_settings(models_dir, tmp_path / "out", profile,
                              box_threshold=threshold, text_threshold=threshold / 2)
    config = BuildConfig.model_validate(settings)
    assert [config.backend(s) for s in ("captions", "nouns")] == ["clip", "flair"]
    stats = dataset.build_directly(config)
    samples = read_samples(tmp_path / "out")
    assert stats.samples == len(samples) > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    provenance = manifest["provenance"]
    assert provenance["captions"]["name"] == "clip" and provenance["nouns"]["name"] == "flair"
    assert provenance["grounding"]["name"] == ("grounded_sam" if profile == "paper" else "hybrid")
    sources = set()
    for sample in samples:
        assert sample.caption in [c.text for c in sample.candidates]
        chosen = max((c for c in sample.candidates if c.score is not None), key=lambda c: c.score)
        assert chosen.text == sample.caption or chosen.score == next(
            c.score for c in sample.candidates if c.text == sample.caption)
        for noun in sample.nouns:
            assert sample.caption[noun.span[0]:noun.span[1]] == noun.text
            if noun.mask is not None:
                sources.add(noun.source)
                assert list(noun.mask.size) == [sample.height, sample.width]
    if profile == "hybrid":
        assert "coco_annotations" in sources  # COCO masks for table nouns; the model for the rest
