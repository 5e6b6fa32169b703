"""Random-weight OWLv2 detectors (and a full-size SD1.4 pipeline in memory), built offline for tests
and benchmarks. The tokenizer is CLIP's real BPE (see tasks/training/toy.py), so queries tokenize
exactly as with the released OWLv2; only the network weights are random."""
from __future__ import annotations

from pathlib import Path
from typing import Any

# OWLv2 layouts: "tiny" for tests; "large" is owlv2-large-patch14's architecture (ViT-L/14 at 960 px,
# a 12-layer 768-wide text transformer, 768-d projections; the ensemble checkpoint has the same shapes).
OWLV2_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=16),
                 projection_dim=32),
    "large": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                  vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=960, patch_size=14),
                  projection_dim=768),
}


def owlv2_parts(preset: str = "tiny", seed: int = 0, tokenizer_dir: Path | None = None):
    """(model, processor) of an OWLv2 with random weights. ``tokenizer_dir``: a saved CLIP tokenizer to
    reuse (e.g. a Stable Diffusion folder's tokenizer/), else one is built from open_clip's BPE."""
    import tempfile

    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from tokencompose.tasks.training.toy import clip_tokenizer

    spec = OWLV2_PRESETS[preset]
    config = Owlv2Config(text_config=dict(vocab_size=49408, max_position_embeddings=16, bos_token_id=49406,
                                          eos_token_id=49407, pad_token_id=0, **spec["text"]),
                         vision_config=dict(**spec["vision"]), projection_dim=spec["projection_dim"])
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    size = spec["vision"]["image_size"]
    if tokenizer_dir is not None:
        from transformers import CLIPTokenizerFast

        tokenizer = CLIPTokenizerFast.from_pretrained(tokenizer_dir, local_files_only=True)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer = clip_tokenizer(Path(scratch) / "clip-tokenizer")
    tokenizer.model_max_length = 16
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": size, "width": size}),
                               tokenizer=tokenizer)
    return model, processor


def save_random_owlv2(path: Path, preset: str = "tiny", seed: int = 0, tokenizer_dir: Path | None = None) -> Path:
    """An OWLv2 folder as ``save_pretrained`` writes it: config, weights, preprocessor and tokenizer."""
    model, processor = owlv2_parts(preset, seed, tokenizer_dir)
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def sd14_pipeline(dtype=None, seed: int = 0):
    """Stable Diffusion 1.4's architecture (UNet, VAE, CLIP ViT-L/14 text encoder) with random weights,
    built in memory; the tokenizer is CLIP's real BPE. For speed measurements only."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tokencompose.tasks.training.toy import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.x's config
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, hidden_act="quick_gelu",
                                                projection_dim=768, bos_token_id=49406, eos_token_id=49407,
                                                pad_token_id=49407))
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = clip_tokenizer(Path(scratch) / "tokenizer")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                        scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def perturbed_copy(source: Path, target: Path, seed: int = 1, scale: float = 0.05, nan: bool = False) -> Path:
    """A copy of a pipeline folder whose UNet weights are moved by seeded noise (a stand-in for a
    fine-tuned model), or, with ``nan``, whose UNet output is NaN (to exercise the NaN accounting)."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    target = Path(target)
    shutil.copytree(source, target)
    unet = UNet2DConditionModel.from_pretrained(target / "unet")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if nan:
            unet.conv_out.bias.fill_(float("nan"))
        else:
            for parameter in unet.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    unet.save_pretrained(target / "unet")
    return target
