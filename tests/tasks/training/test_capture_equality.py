"""The optimized capture (one autograd function, probabilities recomputed in backward) gives the same
losses and the same UNet gradients as the explicit computation it replaced, on a real (tiny) diffusers
UNet with random weights in float64, both aggregations, batch 1 and 2.

The expected side is frozen here, independent of the code under test: the previous processor (explicit
``softmax(q k^T * scale)``, probabilities gathered at the noun columns, autograd through everything)
and reference.md section 2's formulas written out per sample and per noun.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from tests.support.training_kit import TINY_LAYERS
from tokencompose.tasks.training.attention import CapturedAttention, install_processors, layer_resolutions
from tokencompose.tasks.training.components import load_components
from tokencompose.tasks.training.losses import Targets, grounding_losses

TARGETS = {f"{layer}.transformer_blocks.0.attn2.processor": layer for layer in TINY_LAYERS}
NOUN_TOKENS = [[[1], [2, 3]], [[4]]]      # sample -> nouns -> token positions in the caption
INDEX = [[1, 2, 3], [4, 0, 0]]           # slots; the second sample's are padded with position 0


class FrozenCapture:
    """The explicit computation as it was before the optimization (kept verbatim in spirit)."""

    def __init__(self, maps: dict, layer: str, index: torch.Tensor):
        self.maps, self.layer, self.index = maps, layer, index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        batch, queries, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        split = lambda t: t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(query), split(key), split(value)
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32   # fp32 probabilities
        probs = (torch.matmul(query, key.transpose(-1, -2)) * attn.scale).softmax(dim=-1, dtype=dtype)
        index = self.index
        self.maps[self.layer] = probs.gather(-1, index[:, None, None, :].expand(batch, attn.heads, queries,
                                                                                index.shape[-1]))
        out = torch.matmul(probs.to(value.dtype), value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def frozen_losses(maps, resolutions, masks, batch: int, aggregation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """reference.md section 2 per sample (sum over the batch's samples of their mean-over-batch share)."""
    token, pixel = [], []
    for b in range(batch):
        nouns = NOUN_TOKENS[b]
        slots = {n: [INDEX[b].index(t) for t in ts] for n, ts in enumerate(nouns)}
        tok_b, pix_b = 0.0, 0.0
        if aggregation == "reference":
            for r in sorted(set(resolutions.values())):
                group = [maps[name][b] for name, res in resolutions.items() if res == r]   # heads x U x K
                mask = masks[r][b].flatten(1)
                tok = 0.0
                for n, ks in slots.items():
                    for attn in group:
                        tok = tok + sum((1 - ((attn[:, :, k] * mask[n]).sum(-1) / attn[:, :, k].sum(-1)).mean()) ** 2
                                        for k in ks) / len(ks)
                tok_b = tok_b + tok / len(nouns)
                abar = sum(a.mean(0) for a in group) / len(group)
                pix_b = pix_b + sum(F.binary_cross_entropy(sum(abar[:, k] for k in ks).clamp(0, 1), mask[n])
                                    for n, ks in slots.items()) / len(nouns)
        else:
            names = list(resolutions)
            for name in names:
                abar = maps[name][b].mean(0)
                mask = masks[resolutions[name]][b].flatten(1)
                tok_b = tok_b + sum(sum((1 - (abar[:, k] * mask[n]).sum() / abar[:, k].sum()) ** 2
                                        for k in ks) / len(ks) for n, ks in slots.items()) / len(nouns) / len(names)
                pix_b = pix_b + sum(sum(F.binary_cross_entropy(abar[:, k], mask[n]) for k in ks) / len(ks)
                                    for n, ks in slots.items()) / len(nouns) / len(names)
        token.append(tok_b)
        pixel.append(pix_b)
    return torch.stack(token), torch.stack(pixel)


def inputs(batch: int):
    g = torch.Generator().manual_seed(batch)
    sample = torch.randn(batch, 4, 16, 16, generator=g, dtype=torch.float64)
    hidden = torch.randn(batch, 77, 32, generator=g, dtype=torch.float64)
    masks = {r: (torch.rand(batch, 2, r, r, generator=g) > 0.5).double() for r in (4, 8, 16)}
    slot_noun = torch.zeros(batch, 2, 3, dtype=torch.float64)
    noun_valid = torch.zeros(batch, 2, dtype=torch.bool)
    for b in range(batch):
        for n, tokens in enumerate(NOUN_TOKENS[b]):
            noun_valid[b, n] = True
            for t in tokens:
                slot_noun[b, n, INDEX[b].index(t)] = 1
    for r in masks:
        masks[r] = masks[r] * noun_valid[..., None, None]
    return sample, torch.tensor([10, 700][:batch]), hidden, Targets(slot_noun, noun_valid, masks)


def weighted(out_token, out_pixel, prediction):
    return (prediction.pow(2).mean(dim=(1, 2, 3)) + 0.3 * out_token + 0.7 * out_pixel).mean()


@pytest.mark.parametrize("aggregation", ["reference", "normalized"])
@pytest.mark.parametrize("batch", [1, 2])
def test_losses_and_gradients_equal_the_explicit_computation(tiny_sd, aggregation, batch):
    unet = load_components(tiny_sd).unet.double().train()
    resolutions = layer_resolutions(unet, TINY_LAYERS, 16)
    sample, timesteps, hidden, targets = inputs(batch)
    index = torch.tensor(INDEX[:batch])

    frozen_maps: dict[str, torch.Tensor] = {}
    unet.set_attn_processor({name: FrozenCapture(frozen_maps, TARGETS[name], index) if name in TARGETS
                             else AttnProcessor2_0() for name in unet.attn_processors})
    prediction = unet(sample, timesteps, hidden).sample
    token, pixel = frozen_losses(frozen_maps, resolutions, targets.masks, batch, aggregation)
    weighted(token, pixel, prediction).backward()
    expected = {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    unet.zero_grad(set_to_none=True)

    store = install_processors(unet, TARGETS, resolutions)
    store.begin(index)
    prediction = unet(sample, timesteps, hidden).sample
    maps = store.end()
    out = grounding_losses(maps, resolutions, targets, aggregation)
    assert maps["up_blocks.2.attentions.0"].shape == (batch, 2, 256, 3)
    for name in frozen_maps:                   # the captured noun columns themselves
        torch.testing.assert_close(maps[name], frozen_maps[name], rtol=1e-12, atol=1e-14)
    # float64 throughout: only summation order differs, ~1e-15 relative
    torch.testing.assert_close(out["token"], token, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out["pixel"], pixel, rtol=1e-10, atol=1e-12)
    weighted(out["token"], out["pixel"], prediction).backward()
    got = {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and any(".attn2.to_k." in n for n in got)
    for name in expected:
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-12 * max(scale, 1.0),
                                   msg=lambda m: f"{name}: {m}")


def explicit(query, key, value, index, scale):
    probs = (torch.matmul(query, key.transpose(-1, -2)) * scale).softmax(dim=-1, dtype=torch.float32)
    b, h, u, _ = probs.shape
    return torch.matmul(probs.to(value.dtype), value), probs.gather(-1, index[:, None, None, :].expand(b, h, u, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_function_equals_autograd_of_the_explicit_computation(dtype):
    """Op for op the same dtypes as autograd through the explicit graph: equal in fp32 and in bf16,
    with duplicated (padding) indices and with only one of the two outputs used."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 8, generator=g).to(dtype) for _ in range(3))
    k, v = k[:, :, :7], v[:, :, :7]
    index = torch.tensor([[1, 2, 0, 0], [3, 3, 5, 0]])
    w_out, w_picked = torch.randn(2, 3, 20, 8, generator=g).to(dtype), torch.randn(2, 3, 20, 4, generator=g)
    for use in ("both", "out", "picked"):
        results = []
        for fn in (explicit, CapturedAttention.apply):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out, picked = fn(*leaves, index, 0.35)
            loss = {"both": (out * w_out).float().sum() + (picked * w_picked).sum(),
                    "out": (out * w_out).float().sum(), "picked": (picked * w_picked).sum()}[use]
            loss.backward()
            results.append((out, picked, *[t.grad for t in leaves]))
        for got, want in zip(results[1], results[0]):
            if want is None:
                assert got is None
                continue
            tolerance = 1e-6 if dtype == torch.float32 else 0.0   # bf16: the same ops in the same order, bit for bit
            torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
