"""Attention capture on a real (tiny) diffusers UNet: only trained layers, same outputs, gradients."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from tests.support.training_kit import TINY_LAYERS
from tokencompose.tasks.training.attention import CaptureProcessor, install_processors, layer_resolutions, paper_layers
from tokencompose.schemas.training import DEFAULT_TRAIN_LAYERS, TrainConfig
from tokencompose.tasks.training.components import load_components


@pytest.fixture
def unet(tiny_sd):
    return load_components(tiny_sd).unet


def targets():
    return {f"{layer}.transformer_blocks.0.attn2.processor": layer for layer in TINY_LAYERS}


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([10, 500][:batch]),
            torch.randn(batch, 77, 32, generator=g))


def test_the_tiny_unet_maps_have_the_sd_layout_resolutions(unet):
    assert layer_resolutions(unet, TINY_LAYERS, 16) == {
        "mid_block.attentions.0": 4, "up_blocks.1.attentions.0": 8, "up_blocks.1.attentions.1": 8,
        "up_blocks.2.attentions.0": 16, "up_blocks.2.attentions.1": 16}


@pytest.mark.paper_size
def test_sd14_default_layers_resolve_to_the_paper_resolutions():
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):  # SD1.4's architecture (its config's defaults), no weights allocated
        sd14 = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    layers = paper_layers(sd14)
    assert layers == list(DEFAULT_TRAIN_LAYERS)
    resolutions = layer_resolutions(sd14, layers, 64)
    assert sorted(set(resolutions.values())) == [8, 16, 32, 64]
    assert resolutions["mid_block.attentions.0"] == 8 and resolutions["up_blocks.3.attentions.2"] == 64


def test_paper_layers_follow_a_small_unets_own_layout(unet):
    """The default needs no --train-layers for a UNet with fewer blocks than SD1.4."""
    layers = paper_layers(unet)
    assert layers[0] == "mid_block.attentions.0" and set(TINY_LAYERS) <= set(layers)
    assert all(name in unet.attn_processors for name in TrainConfig(
        pretrained_model="x", shards=["y"], output_dir="z").processor_targets(layers))


def test_only_trained_cross_attentions_capture(unet):
    install_processors(unet, targets(), layer_resolutions(unet, TINY_LAYERS, 16))
    processors = unet.attn_processors
    capture = {name for name, p in processors.items() if isinstance(p, CaptureProcessor)}
    assert capture == set(targets())
    assert all(isinstance(p, AttnProcessor2_0) for name, p in processors.items() if name not in capture)
    with pytest.raises(ValueError, match="cross-attention modules"):
        install_processors(unet, {"up_blocks.9.attentions.0.transformer_blocks.0.attn2.processor": "x"})


def test_capture_keeps_the_output_and_exposes_probabilities(unet):
    sample, timesteps, hidden = inputs()
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor2_0())
        fused = unet(sample, timesteps, hidden).sample
        store = install_processors(unet, targets(), layer_resolutions(unet, TINY_LAYERS, 16))
        store.begin(torch.arange(77).expand(2, 77))
        captured = unet(sample, timesteps, hidden).sample
        maps = store.end()
    torch.testing.assert_close(captured, fused, rtol=1e-5, atol=1e-5)
    assert set(maps) == set(TINY_LAYERS)
    assert maps["up_blocks.2.attentions.0"].shape == (2, 2, 16 * 16, 77)
    for attn in maps.values():
        assert attn.dtype == torch.float32
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))
    store.begin(torch.tensor([[3, 5], [1, 2]]))
    with torch.no_grad():
        unet(sample, timesteps, hidden)
    picked = store.end()["mid_block.attentions.0"]
    torch.testing.assert_close(picked[1], maps["mid_block.attentions.0"][1][..., [1, 2]])


def grounding_grads(unet, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    store = install_processors(unet, targets(), layer_resolutions(unet, TINY_LAYERS, 16))
    sample, timesteps, hidden = inputs()
    store.begin(torch.tensor([[1, 2], [4, 0]]))
    unet(sample, timesteps, hidden)
    maps = store.end()
    loss = sum((a[..., : a.shape[-2] // 2, :].sum() / a.sum()) for a in maps.values())  # attention to the top half
    loss.backward()
    recorded_after_backward = len(store.maps)
    return {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}, recorded_after_backward


def test_gradients_reach_the_trained_layers_and_checkpointing_changes_nothing(tiny_sd):
    plain, _ = grounding_grads(load_components(tiny_sd).unet, checkpointing=False)
    for layer in TINY_LAYERS:
        for proj in ("to_q", "to_k"):
            grad = plain[f"{layer}.transformer_blocks.0.attn2.{proj}.weight"]
            assert grad.abs().sum() > 0
    assert plain["conv_in.weight"].abs().sum() > 0            # and through them into the earlier layers
    assert "conv_out.weight" not in plain                     # after the last map: untouched
    checkpointed, recorded = grounding_grads(load_components(tiny_sd).unet, checkpointing=True)
    assert recorded == 0                                      # the backward replays recorded nothing
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
