"""Fixtures: a tiny but real Stable Diffusion folder and tiny build-grounded-coco shards, all offline."""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tokencompose.schemas.sample import BackendInfo, Noun, Provenance, SampleRecord, sample_key  # noqa: E402
from tokencompose.tasks.masks import encode  # noqa: E402
from tokencompose.tasks.shards import write_shard  # noqa: E402
from tokencompose.training.config import TrainConfig  # noqa: E402

# The tiny models are far too small to gain from intra-op threads; on a shared 2-core machine the
# thread pool's spinning makes each step several times slower.
torch.set_num_threads(1)

RESOLUTION = 64  # VAE factor 4 -> latent 16 -> maps 4x4 (mid), 8x8 and 16x16 (decoder)
TINY_LAYERS = ("mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
               "up_blocks.2.attentions.0", "up_blocks.2.attentions.1")


def clip_bpe_tokenizer_files(directory: Path) -> Path:
    """The real CLIP BPE vocabulary (open_clip ships it) as a Hugging Face vocab.json + merges.txt."""
    import open_clip
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # CLIP uses the first 48,894 merges: 49,408 tokens in all
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


def build_tiny_sd(path: Path) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPTokenizerFast

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    files = clip_bpe_tokenizer_files(path.parent / f"{path.name}-bpe")
    slow = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)
    slow.save_pretrained(files / "slow")
    tokenizer = CLIPTokenizerFast.from_pretrained(files / "slow")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


PROVENANCE = Provenance(tokencompose="test", config_hash="0" * 16,
                        captions=BackendInfo(name="test", version="0"), nouns=BackendInfo(name="test", version="0"),
                        grounding=BackendInfo(name="test", version="0"))


def box_mask(height: int, width: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A boolean mask of the box given in fractions of the image size."""
    mask = np.zeros((height, width), dtype=bool)
    mask[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = True
    return mask


def make_record(image_id: int, image: np.ndarray, caption: str, nouns: list[tuple[str, np.ndarray | None]]
                ) -> tuple[SampleRecord, bytes]:
    """A valid shard sample: spans are each noun text's next occurrence in the caption."""
    height, width = image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(image).convert("RGB").save(buffer, format="JPEG", quality=90)
    entries, cursor = [], 0
    for text, mask in nouns:
        start = caption.index(text, cursor)
        cursor = start + len(text)
        if mask is None:
            entries.append(Noun(text=text, span=(start, cursor), reason="no_detection"))
        else:
            entries.append(Noun(text=text, span=(start, cursor), mask=encode(mask), source="test"))
    record = SampleRecord(key=sample_key(image_id), image_id=image_id, file_name=f"{image_id:012d}.jpg",
                          width=width, height=height, image_field="jpg", image_mode="RGB", caption=caption,
                          caption_id=image_id, candidates=[], nouns=entries, provenance=PROVENANCE)
    return record, buffer.getvalue()


def photo_samples() -> list[tuple[SampleRecord, bytes]]:
    from skimage import data

    cat, astronaut, coffee, rocket = data.chelsea(), data.astronaut(), data.coffee(), data.rocket()
    h, w = cat.shape[:2]
    samples = [
        make_record(1, cat, "a cat to the left of a cup", [("cat", box_mask(h, w, 0.05, 0.1, 0.55, 0.95)),
                                                          ("cup", box_mask(h, w, 0.6, 0.5, 0.9, 0.9))]),
    ]
    h, w = astronaut.shape[:2]
    samples.append(make_record(2, astronaut, "an astronaut above a flag and a rocket", [
        ("astronaut", box_mask(h, w, 0.1, 0.0, 0.8, 0.6)), ("flag", None),
        ("rocket", box_mask(h, w, 0.0, 0.7, 0.3, 1.0))]))
    h, w = coffee.shape[:2]
    samples.append(make_record(3, coffee, "a coffee cup on a saucer next to a spoon", [
        ("coffee cup", box_mask(h, w, 0.25, 0.1, 0.8, 0.7)), ("saucer", box_mask(h, w, 0.1, 0.3, 0.95, 0.95)),
        ("spoon", box_mask(h, w, 0.0, 0.6, 0.3, 0.9))]))
    h, w = rocket.shape[:2]
    long_caption = "a rocket " + "very " * 80 + "close to a tower"  # "tower" falls past the 77-token window
    samples.append(make_record(4, rocket, long_caption, [("rocket", box_mask(h, w, 0.4, 0.2, 0.6, 0.9)),
                                                       ("tower", box_mask(h, w, 0.7, 0.1, 0.9, 0.9))]))
    return samples


def write_shards(out_dir: Path, samples: list[tuple[SampleRecord, bytes]], per_shard: int) -> Path:
    for index, start in enumerate(range(0, len(samples), per_shard)):
        write_shard(out_dir, index, samples[start:start + per_shard], "jpg")
    return out_dir / "shards"


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("data"), photo_samples(), per_shard=2)


@pytest.fixture
def make_config(tiny_sd, shard_dir, tmp_path):
    """TrainConfig for the tiny model and shards, fast settings; keyword overrides."""
    def make(**overrides) -> TrainConfig:
        values = dict(pretrained_model=tiny_sd, shards=[str(shard_dir / "shard-*.tar")], output_dir=tmp_path / "run",
                      resolution=RESOLUTION, train_layers=TINY_LAYERS, max_steps=2, train_batch_size=1,
                      gradient_accumulation_steps=1, num_workers=0, shuffle_buffer=4, gradient_checkpointing=False,
                      checkpoint_every=1000, log_every=1, export=False, seed=0)
        values.update(overrides)
        return TrainConfig(**values)
    return make


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Each Trainer builds its own Accelerator; accelerate keeps process-wide state between them."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
