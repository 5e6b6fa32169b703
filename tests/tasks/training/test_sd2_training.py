"""Training on the two Stable Diffusion 2.x layouts (tiny random folders from tests/support/sd2_models.py):
"v" (SD2/2.1: v-prediction, 768 px-style) and "base" (SD2-base: epsilon, 512 px-style).

The layout, the resolution and the target come from the model; the loss of one batch equals the same
computation written out here (diffusers' explicit attention, the paper's formulas as loops); a run
resumes exactly and exports a pipeline that generates at the model's resolution."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image

from tokencompose.schemas.training import TRAIN_CONFIG_FILE, TrainConfig
from tokencompose.tasks.training.data import collate
from tokencompose.tasks.training.trainer import METRICS_FILE, Trainer, sample_seed

from tests.support.sd2_models import (SD2_HEADS, SD2_LAYERS, SD2_PREDICTION, SD2_RESOLUTION, SD2_TEXT_LAYERS,
                                      sd2_models, sd2_resolutions)

assert sd2_models  # a fixture, used by name below

VARIANTS = ("v", "base")


@pytest.fixture
def sd2_config(sd2_models, shard_dir, tmp_path):
    """TrainConfig for an SD2 variant with neither resolution nor layers given: both from the model."""
    def make(variant: str, **overrides) -> TrainConfig:
        values = dict(pretrained_model=sd2_models / variant, shards=[str(shard_dir / "shard-*.tar")],
                      output_dir=tmp_path / f"run-{variant}", max_steps=2, train_batch_size=1,
                      gradient_accumulation_steps=1, num_workers=0, shuffle_buffer=4, gradient_checkpointing=False,
                      checkpoint_every=1000, log_every=1, export=False, seed=0, learning_rate=1e-3,
                      token_weight=1.0, pixel_weight=0.5)
        values.update(overrides)
        return TrainConfig(**values)
    return make


@pytest.mark.parametrize("variant", VARIANTS)
def test_layout_resolution_and_target_come_from_the_model(sd2_config, variant):
    trainer = Trainer(sd2_config(variant))
    m = trainer.models
    assert m.text_encoder.config.hidden_act == "gelu" and m.text_encoder.config.num_hidden_layers == SD2_TEXT_LAYERS
    assert m.tokenizer.pad_token == "!" and m.tokenizer.pad_token_id == 0
    assert m.unet.config.use_linear_projection and list(m.unet.config.attention_head_dim) == list(SD2_HEADS)
    assert m.noise_scheduler.config.prediction_type == SD2_PREDICTION[variant]
    assert trainer.config.resolution == SD2_RESOLUTION[variant]
    saved = TrainConfig.from_file(trainer.output_dir / TRAIN_CONFIG_FILE)
    assert saved.resolution == SD2_RESOLUTION[variant]          # the run's files name the resolved value
    assert tuple(trainer.train_layers) == SD2_LAYERS
    assert trainer.resolutions == sd2_resolutions(variant)
    assert trainer.preprocess.resolution == SD2_RESOLUTION[variant]
    assert list(trainer.preprocess.mask_resolutions) == sorted(set(sd2_resolutions(variant).values()))
    # the captured maps: one per trained layer, r*r queries at that layer's side
    stream = iter(trainer.loader().dataset)
    batch = collate([next(stream) for _ in range(2)])
    trainer.store.begin(batch.token_index)
    with torch.no_grad():
        latents = torch.randn(2, 4, *(2 * [SD2_RESOLUTION[variant] // 4]))
        trainer.unet(latents, torch.tensor([10, 500]), m.text_encoder(batch.input_ids)[0])
    maps = trainer.store.end()
    assert {layer: int(a.shape[2] ** 0.5) for layer, a in maps.items()} == sd2_resolutions(variant)
    heads = {"mid_block": SD2_HEADS[-1], "up_blocks.1": SD2_HEADS[1], "up_blocks.2": SD2_HEADS[0]}
    for layer, attention in maps.items():
        assert attention.shape[1] == heads[layer.rsplit(".attentions", 1)[0]]
    # an explicit resolution wins over the model's
    if variant == "v":
        assert Trainer(sd2_config(variant, resolution=64, output_dir=trainer.output_dir.parent / "r64")).resolutions[
            "mid_block.attentions.0"] == 64 // 4 // 4


class Recorder:
    """diffusers' explicit attention (``attn.get_attention_scores``, then ``probs @ v``) that keeps the
    probabilities, shaped (B, heads, queries, 77)."""

    def __init__(self, store: dict, layer: str):
        self.store, self.layer = store, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        batch, queries, _ = hidden_states.shape
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)
        self.store[self.layer] = probs.view(batch, attn.heads, queries, -1)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = p.clamp(0, 1)
    return -(y * torch.log(p).clamp_min(-100) + (1 - y) * torch.log(1 - p).clamp_min(-100))


def written_out_loss(trainer: Trainer, batch) -> dict[str, torch.Tensor]:
    """L_LDM + lambda L_token + gamma L_pixel of the batch, computed step by step (the authors' reference
    aggregation: per group of equal-side maps, summed over groups)."""
    m, cfg = trainer.models, trainer.config
    hidden = m.text_encoder(batch.input_ids, output_hidden_states=True)
    # SD2's folder keeps OpenCLIP's penultimate layer as its last: the output is that layer, layer-normed
    torch.testing.assert_close(hidden.last_hidden_state,
                               m.text_encoder.text_model.final_layer_norm(hidden.hidden_states[-1]))
    posterior = m.vae.encode(batch.pixel_values).latent_dist
    shape = tuple(posterior.mean.shape[1:])
    timesteps, vae_noise, noise = [], [], []
    for i in range(batch.size):
        gen = torch.Generator().manual_seed(sample_seed(cfg.seed, 0, trainer.state.samples + i))
        timesteps.append(torch.randint(0, 1000, (1,), generator=gen))
        vae_noise.append(torch.randn(shape, generator=gen))
        noise.append(torch.randn(shape, generator=gen))
    t = torch.cat(timesteps)
    latents = (posterior.mean + posterior.std * torch.stack(vae_noise)) * m.vae.config.scaling_factor
    eps = torch.stack(noise)
    abar = m.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    target = abar.sqrt() * eps - (1 - abar).sqrt() * latents if cfg_prediction(trainer) == "v_prediction" else eps
    maps: dict[str, torch.Tensor] = {}
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    kept = dict(unet.attn_processors)
    unet.set_attn_processor({name: Recorder(maps, name.split(".transformer_blocks")[0])
                             if name.split(".transformer_blocks")[0] in trainer.resolutions and ".attn2." in name
                             else AttnProcessor() for name in unet.attn_processors})
    try:
        prediction = unet(noisy, t, hidden.last_hidden_state).sample
    finally:
        unet.set_attn_processor(kept)
    ldm = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    token, pixel = torch.zeros(batch.size), torch.zeros(batch.size)
    for b in range(batch.size):
        nouns = [n for n in range(batch.noun_valid.shape[1]) if batch.noun_valid[b, n]]
        for side in sorted(set(trainer.resolutions.values())):
            layers = [layer for layer, r in trainer.resolutions.items() if r == side]
            token_group, pixel_group = 0.0, 0.0
            for n in nouns:
                mask = batch.masks[side][b, n].flatten()
                tokens = [int(batch.token_index[b, k]) for k in range(batch.slot_noun.shape[2])
                          if batch.slot_noun[b, n, k]]
                for layer in layers:
                    a = maps[layer][b]                                   # heads x queries x 77
                    token_group += sum((1 - (a[:, :, tok] * mask).sum(1).div(a[:, :, tok].sum(1)).mean()) ** 2
                                       for tok in tokens) / len(tokens)
                mean_map = torch.stack([maps[layer][b].mean(0) for layer in layers]).mean(0)   # queries x 77
                pixel_group += bce(sum(mean_map[:, tok] for tok in tokens), mask).mean()
            token[b] += token_group / max(1, len(nouns))
            pixel[b] += pixel_group / max(1, len(nouns))
    per_sample = ldm + cfg.token_weight * token + cfg.pixel_weight * pixel
    return {"loss": per_sample.mean(), "ldm": ldm.mean(), "token": token.mean(), "pixel": pixel.mean()}


def cfg_prediction(trainer: Trainer) -> str:
    return trainer.models.noise_scheduler.config.prediction_type


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_loss_equals_the_computation_written_out(sd2_config, variant):
    trainer = Trainer(sd2_config(variant))
    stream = iter(trainer.loader().dataset)
    batch = collate([next(stream) for _ in range(3)])
    assert batch.noun_valid.sum() >= 4
    with torch.no_grad():
        _, logs = trainer.compute_loss(batch)
        expected = written_out_loss(trainer, batch)
    for term, value in expected.items():
        torch.testing.assert_close(logs[term], value, rtol=1e-6, atol=1e-6, msg=lambda text: f"{term}: {text}")
    assert logs["token"] > 0 and logs["pixel"] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_resume_and_export(sd2_config, variant, tmp_path):
    from diffusers import StableDiffusionPipeline

    straight = Trainer(sd2_config(variant, max_steps=2, output_dir=tmp_path / "straight", export=True,
                                  validation_prompts=["a cat to the left of a cup"], validation_nouns=["cat"],
                                  validation_inference_steps=2)).train()
    Trainer(sd2_config(variant, max_steps=1, output_dir=tmp_path / "resumed")).train()   # checkpoint at step 1
    resumed_trainer = Trainer(sd2_config(variant, max_steps=2, output_dir=tmp_path / "resumed", resume=True))
    assert resumed_trainer.state.step == 1
    resumed_trainer.train()

    def losses(run):
        return [(r["step"], r["loss"], r["ldm"], r["token"]) for r in
                map(json.loads, (run / METRICS_FILE).read_text().splitlines())]
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "straight")) == 2
    groups = {f"token/{r}x{r}" for r in set(sd2_resolutions(variant).values())}
    assert groups <= json.loads((tmp_path / "straight" / METRICS_FILE).read_text().splitlines()[-1]).keys()

    side = SD2_RESOLUTION[variant]
    validation = tmp_path / "straight" / "validation" / "step-000002"
    assert Image.open(validation / "00.png").size == (side, side)   # validation generates at the run's resolution
    assert straight.pipeline_dir is not None
    pipe = StableDiffusionPipeline.from_pretrained(straight.pipeline_dir, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == SD2_PREDICTION[variant]
    image = pipe("a cat to the left of a cup", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images   # no height/width: the model's own
    assert image.shape == (1, side, side, 3) and torch.isfinite(torch.from_numpy(image)).all()


def test_an_unknown_prediction_type_stops_at_load_naming_the_folder(sd2_models, tmp_path):
    import shutil

    from tokencompose.tasks.training.components import load_components

    folder = shutil.copytree(sd2_models / "base", tmp_path / "odd")
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(config_file.read_text().replace('"epsilon"', '"flow_matching"'))
    with pytest.raises(ValueError, match=r"odd/scheduler: prediction_type 'flow_matching' is not one of epsilon"):
        load_components(folder)
