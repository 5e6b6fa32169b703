"""Random-weight Stable Diffusion folders and photo shards, built offline: for tests, benchmarks and
smoke runs on machines without the real weights.

The tokenizer is the real CLIP BPE (open_clip ships its merges), so tokenization and character
offsets are exactly those of SD1.x; only the network weights are random.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokencompose.schemas.reasons import NounReason
from tokencompose.schemas.sample import BackendInfo, CocoRLE, Noun, Provenance, SampleRecord, sample_key
from tokencompose.tasks.grounding.masks import encode
from tokencompose.tasks.shards.build import write_shard

# name -> (UNet kwargs, VAE block_out_channels, text encoder hidden size, text layers, training resolution)
PRESETS: dict[str, dict[str, Any]] = {
    # 3 levels, maps 4/8/16 at resolution 64 (VAE factor 4)
    "tiny": dict(unet=dict(sample_size=16, layers_per_block=1, block_out_channels=(32, 32, 64), norm_num_groups=8,
                           cross_attention_dim=32, attention_head_dim=2,
                           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
                 vae=(16, 16, 32), text_hidden=32, text_layers=2, resolution=64),
    # SD1.x layout (4 levels, 2 layers per block, 8 heads) with narrow channels; maps 4/8/16/32 at 256
    "small": dict(unet=dict(sample_size=32, layers_per_block=2, block_out_channels=(32, 64, 128, 128),
                            norm_num_groups=32, cross_attention_dim=64, attention_head_dim=8),
                  vae=(16, 16, 32, 32), text_hidden=64, text_layers=2, resolution=256),
    # SD1.4's UNet exactly (diffusers' defaults are its config); tiny VAE and a 768-wide 2-layer text encoder
    "sd14": dict(unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                 vae=(16, 16, 32, 32), text_hidden=768, text_layers=2, resolution=512),
}


def clip_tokenizer(directory: Path):
    """A CLIPTokenizerFast with CLIP's real 49,408-token BPE vocabulary, saved in ``directory``."""
    import open_clip
    from transformers import CLIPTokenizer, CLIPTokenizerFast
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # CLIP keeps the first 48,894 merges
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    slow = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)
    slow.save_pretrained(directory)
    return CLIPTokenizerFast.from_pretrained(directory)


def save_random_pipeline(path: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """A complete diffusers StableDiffusionPipeline folder with random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = PRESETS[preset]
    path = Path(path)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **spec["unet"])
    levels = len(spec["vae"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=spec["vae"],
                        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                        layers_per_block=1, norm_num_groups=8, sample_size=spec["resolution"])
    hidden = spec["text_hidden"]
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=spec["text_layers"],
        num_attention_heads=max(1, hidden // 64) if hidden >= 64 else 2, max_position_embeddings=77,
        projection_dim=hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    tokenizer = clip_tokenizer(path.parent / f".{path.name}-tokenizer")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    # Any: under mypy diffusers' pipeline class lacks its mixin's save_pretrained (diffusers 0.39)
    pipeline: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return path


TOY_PROVENANCE = Provenance(tokencompose="toy", config_hash="0" * 16,
                            captions=BackendInfo(name="toy", version="0"), nouns=BackendInfo(name="toy", version="0"),
                            grounding=BackendInfo(name="toy", version="0"))


def box_mask(height: int, width: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A boolean mask of the box given in fractions of the image size."""
    mask = np.zeros((height, width), dtype=bool)
    mask[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = True
    return mask


def make_record(image_id: int, image: np.ndarray, caption: str, nouns: list[tuple[str, np.ndarray | None]]
                ) -> tuple[SampleRecord, bytes]:
    """A valid shard sample (JPEG bytes + record); spans are each noun's next occurrence in the caption."""
    height, width = image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(image).convert("RGB").save(buffer, format="JPEG", quality=90)
    entries, cursor = [], 0
    for text, mask in nouns:
        start = caption.index(text, cursor)
        cursor = start + len(text)
        if mask is None:
            entries.append(Noun(text=text, span=(start, cursor), reason=NounReason.NO_DETECTION))
        else:
            entries.append(Noun(text=text, span=(start, cursor), mask=CocoRLE(**encode(mask)), source="toy"))
    record = SampleRecord(key=sample_key(image_id), image_id=image_id, file_name=f"{image_id:012d}.jpg",
                          width=width, height=height, image_field="jpg", image_mode="RGB", caption=caption,
                          caption_id=image_id, candidates=[], nouns=entries, provenance=TOY_PROVENANCE)
    return record, buffer.getvalue()


def photo_shards(out_dir: Path, samples: int = 16, per_shard: int = 4) -> Path:
    """Shards of scikit-image's bundled photos with box masks; returns the shards folder."""
    from skimage import data

    photos = [(data.chelsea(), "a cat next to a wall", [("cat", (0.05, 0.1, 0.6, 0.95)), ("wall", (0.6, 0, 1, 1))]),
              (data.astronaut(), "an astronaut above a flag", [("astronaut", (0.1, 0, 0.8, 0.7)),
                                                                ("flag", (0, 0.7, 0.3, 1))]),
              (data.coffee(), "a coffee cup on a saucer", [("coffee cup", (0.25, 0.1, 0.8, 0.7)),
                                                           ("saucer", (0.1, 0.3, 0.95, 0.95))]),
              (data.rocket(), "a rocket left of a tower", [("rocket", (0.4, 0.2, 0.6, 0.9)),
                                                          ("tower", (0.7, 0.1, 0.9, 0.9))])]
    records = []
    for i in range(samples):
        image, caption, nouns = photos[i % len(photos)]
        h, w = image.shape[:2]
        records.append(make_record(i + 1, image, caption, [(t, box_mask(h, w, *b)) for t, b in nouns]))
    for index, start in enumerate(range(0, samples, per_shard)):
        write_shard(Path(out_dir), index, records[start:start + per_shard], "jpg")
    return Path(out_dir) / "shards"
