"""Cross-attention capture through diffusers attention processors.

Only the trained ``attn2`` modules get :class:`CaptureProcessor`; every other attention runs the
fused :class:`AttnProcessor2_0`. The capture computes the attention probabilities once (77 keys, so
the map is small), uses them for the output and hands the losses only the columns of the caption's
noun tokens. It is one autograd function (:class:`CapturedAttention`) that keeps only the query,
key and value for backward and recomputes the probabilities there: the full (B, heads, HW, 77)
probabilities (fp32, plus a bf16 copy under autocast) are not held until backward, so the grounded
step's activation memory is the plain step's plus the noun columns. Forward values and gradients
are those of the explicit ``softmax(q k^T * scale) @ v`` with a gather of the noun columns, op for
op and dtype for dtype (tests/tasks/training/test_capture_equality.py checks them against that).
A step without nouns takes the fused path.

Under gradient checkpointing a block's forward runs again during backward. The processor then does
the same computation (the checkpoint replays must match) but records nothing, because the store is
only recording between :meth:`AttentionStore.begin` and :meth:`AttentionStore.end`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


def _probs_dtype(query: torch.Tensor) -> torch.dtype:
    """fp32 probabilities feed the losses (float64 stays float64, for exact comparisons)."""
    return torch.float64 if query.dtype == torch.float64 else torch.float32


class CapturedAttention(torch.autograd.Function):
    """``out = softmax(q k^T * scale) @ v`` and ``picked = probs[..., index]`` (fp32), saving only
    q, k, v and the index for backward, where the probabilities are recomputed.

    Shapes: q (B, H, U, d), k and v (B, H, L, d), index (B or 1, K) long. The dtypes follow the
    explicit computation under autocast: scores in q's dtype, fp32 softmax, the product in v's dtype.
    """

    @staticmethod
    def forward(ctx, query, key, value, index, scale: float):
        probs = (torch.matmul(query, key.transpose(-1, -2)) * scale).softmax(dim=-1, dtype=_probs_dtype(query))
        out = torch.matmul(probs.to(value.dtype), value)
        batch, heads, queries, _ = probs.shape
        picked = probs.gather(-1, index[:, None, None, :].expand(batch, heads, queries, index.shape[-1]))
        ctx.save_for_backward(query, key, value, index)
        ctx.scale = scale
        ctx.set_materialize_grads(False)
        return out, picked

    @staticmethod
    def backward(ctx, grad_out, grad_picked):
        query, key, value, index = ctx.saved_tensors
        scale = ctx.scale
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.matmul(query, key.transpose(-1, -2)) * scale
            probs = scores.softmax(dim=-1, dtype=_probs_dtype(query))
            grad_probs = None
            grad_value = None
            if grad_out is not None:
                low = probs.to(value.dtype)
                grad_value = torch.matmul(low.transpose(-1, -2), grad_out.to(value.dtype))
                grad_probs = torch.matmul(grad_out.to(value.dtype), value.transpose(-1, -2)).to(probs.dtype)
                del low
            if grad_picked is not None:
                batch, heads, queries, _ = probs.shape
                expanded = index[:, None, None, :].expand(batch, heads, queries, index.shape[-1])
                if grad_probs is None:
                    grad_probs = torch.zeros_like(probs)
                grad_probs.scatter_add_(-1, expanded, grad_picked.to(probs.dtype))
            if grad_probs is None:
                return None, None, grad_value, None, None
            # autograd's own softmax backward (fp32), then back to the scores' dtype as softmax(dtype=) does
            grad_scores = torch.ops.aten._softmax_backward_data(grad_probs, probs, -1, probs.dtype).to(scores.dtype)
            del probs, grad_probs
            grad_scores = grad_scores * scale
            grad_query = torch.matmul(grad_scores, key) if ctx.needs_input_grad[0] else None
            grad_key = torch.matmul(grad_scores.transpose(-1, -2), query) if ctx.needs_input_grad[1] else None
        return grad_query, grad_key, grad_value, None, None


class AttentionStore:
    """Maps captured during one UNet forward: layer -> (B, heads, HW, K) float32 probabilities."""

    def __init__(self) -> None:
        self.token_index: torch.Tensor | None = None
        self.recording = False
        self.maps: dict[str, torch.Tensor] = {}

    def begin(self, token_index: torch.Tensor | None) -> None:
        """Start recording; ``token_index`` (B, K) selects the key columns to keep (None: keep nothing)."""
        self.token_index = token_index if token_index is not None and token_index.shape[-1] else None
        self.maps = {}
        self.recording = True

    def end(self) -> dict[str, torch.Tensor]:
        self.recording = False
        maps, self.maps = self.maps, {}
        return maps


class CaptureProcessor:
    """An attention processor that exposes the probabilities of selected key tokens."""

    def __init__(self, store: AttentionStore, layer: str, resolution: int | None = None):
        self.store = store
        self.layer = layer
        self.resolution = resolution

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs
                 ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, queries, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        split = lambda t: t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        query, key, value = split(query), split(key), split(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        index = self.store.token_index
        if index is None:
            # nothing to capture: the fused kernel, as on every other attention
            mask = None
            if attention_mask is not None:
                mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
                mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)
        elif attention_mask is not None:  # not the case for SD's cross-attention; kept explicit
            scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1])
            probs = scores.softmax(dim=-1, dtype=_probs_dtype(query))  # fp32 probabilities feed the losses
            self._check(queries)
            index = index.to(probs.device)
            self._record(probs.gather(-1, index[:, None, None, :].expand(*probs.shape[:3], index.shape[-1])))
            hidden_states = torch.matmul(probs.to(value.dtype), value)
        else:
            self._check(queries)
            hidden_states, picked = CapturedAttention.apply(query, key, value, index.to(query.device), attn.scale)
            self._record(picked)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _check(self, queries: int) -> None:
        if self.resolution is not None and queries != self.resolution ** 2:
            raise RuntimeError(f"{self.layer}: {queries} queries, expected {self.resolution}x{self.resolution}; "
                               "the image resolution does not match the one the masks were made for")

    def _record(self, picked: torch.Tensor) -> None:
        if self.store.recording:
            self.store.maps[self.layer] = picked


def layer_downscale(unet, layer: str) -> int:
    """How many times smaller than the latent an attention block's feature map is."""
    kind, _, rest = layer.partition(".")
    downsampling = [getattr(block, "downsamplers", None) is not None for block in unet.down_blocks]
    if kind == "mid_block":
        return 2 ** sum(downsampling)
    index = int(rest.split(".")[0])
    if kind == "down_blocks":
        return 2 ** sum(downsampling[:index])
    if kind == "up_blocks":
        upsampled = sum(getattr(block, "upsamplers", None) is not None for block in unet.up_blocks[:index])
        return 2 ** (sum(downsampling) - upsampled)
    raise ValueError(f"unknown UNet block {layer!r}")


def paper_layers(unet) -> list[str]:
    """The paper's trained blocks for this UNet's layout: the middle block and every decoder block
    with attention (for SD1.x/2.x: mid_block.attentions.0 and up_blocks.1-3.attentions.0-2)."""
    layers = [f"mid_block.attentions.{i}" for i in range(len(getattr(unet.mid_block, "attentions", None) or []))]
    for b, block in enumerate(unet.up_blocks):
        layers += [f"up_blocks.{b}.attentions.{i}" for i in range(len(getattr(block, "attentions", None) or []))]
    return layers


def layer_resolutions(unet, layers, latent_size: int) -> dict[str, int]:
    resolutions = {}
    for layer in layers:
        factor = layer_downscale(unet, layer)
        if latent_size % factor:
            raise ValueError(f"latent size {latent_size} is not divisible by {factor} for {layer}")
        resolutions[layer] = latent_size // factor
    return resolutions


def install_processors(unet, targets: dict[str, str], resolutions: dict[str, int] | None = None) -> AttentionStore:
    """Capture on ``targets`` (``unet.attn_processors`` key -> layer name), the fused path everywhere else."""
    available = set(unet.attn_processors)
    missing = [name for name in targets if name not in available]
    if missing:
        cross = sorted(name for name in available if ".attn2." in name)
        raise ValueError(f"no attention module {missing}; cross-attention modules of this UNet: {cross}")
    store = AttentionStore()
    processors: dict[str, CaptureProcessor | AttnProcessor2_0] = {}
    for name in available:
        if name in targets:
            layer = targets[name]
            processors[name] = CaptureProcessor(store, layer, (resolutions or {}).get(layer))
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    return store
