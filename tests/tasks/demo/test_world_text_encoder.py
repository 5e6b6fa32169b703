"""Protocol v2's text encoder fit (tasks/demo/world.py `fit_text_encoder`): the start model's text encoder,
trained as a tiny CLIP's text tower on a world's (image, caption) pairs, keeps its config, learns to match
captions to images (loss below chance), is reproducible from the seed, and leaves the rest of the model alone."""
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from tokencompose.tasks.demo.world import WorldProtocol, fit_text_encoder
from tokencompose.tasks.source.world import write_world
from tokencompose.tasks.training.toy import save_random_pipeline

BATCH = 16


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_fitted_text_encoder_matches_captions_to_images_and_is_reproducible(tmp_path):
    from transformers import CLIPTextModel

    torch.set_num_threads(1)
    source = write_world(tmp_path / "world", 48, seed=3, image_size=32)
    protocol = dataclasses.replace(WorldProtocol.reduced(), text_encoder_steps=60, text_encoder_batch=BATCH)
    models = [save_random_pipeline(tmp_path / name, "tiny", seed=0) for name in ("a", "b")]
    random_encoder = CLIPTextModel.from_pretrained(models[0] / "text_encoder")
    before = digests(models[0])

    losses = [fit_text_encoder(model, source, protocol) for model in models]
    assert losses[0] == losses[1] and losses[0] < 0.5 * math.log(BATCH), losses   # chance: ln(batch)
    after = digests(models[0])
    assert after == digests(models[1])                                            # same seed, same bytes
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed and all(name.startswith("text_encoder/") for name in changed), changed

    fitted = CLIPTextModel.from_pretrained(models[0] / "text_encoder")
    assert fitted.config.to_dict() == random_encoder.config.to_dict() | {"_name_or_path": fitted.config._name_or_path}
    moved = [not torch.equal(a, b) for a, b in zip(fitted.state_dict().values(), random_encoder.state_dict().values())]
    assert any(moved)


def test_a_start_model_made_with_other_fits_is_refused_before_any_work(tmp_path):
    from tokencompose.tasks.demo.world import START_FILE, make_start_model

    unfitted = dataclasses.replace(WorldProtocol.reduced(), text_encoder_steps=0)
    model = make_start_model(tmp_path, tmp_path / "no-source-needed", unfitted, say=lambda line: None)
    assert json.loads((model / START_FILE).read_text())["text_encoder_steps"] == 0
    assert make_start_model(tmp_path, tmp_path / "no-source-needed", unfitted, say=lambda line: None) == model

    fitted = dataclasses.replace(unfitted, text_encoder_steps=300)
    with pytest.raises(ValueError, match=r"made with other settings \(text_encoder_steps=0; this protocol: "
                                         r"text_encoder_steps=300\): remove models/, runs/ and evaluation/ in "):
        make_start_model(tmp_path, tmp_path / "no-source-needed", fitted, say=lambda line: None)
    (model / START_FILE).unlink()      # a start model of protocol v1, made before the record: no encoder fit
    with pytest.raises(ValueError, match="text_encoder_steps=0"):
        make_start_model(tmp_path, tmp_path / "no-source-needed", fitted, say=lambda line: None)
    assert make_start_model(tmp_path, tmp_path / "no-source-needed", unfitted, say=lambda line: None) == model
