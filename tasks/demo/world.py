"""The world demo: generate the synthetic world, build it, train a tiny Stable Diffusion twice (L_LDM only,
and with the grounding losses) from the same start, evaluate both with the normal MultiGen machinery
(the world's exact detector, the attention-mask IoU on a held-out test world) and write a report.

Every number of the protocol is in :class:`WorldProtocol` (docs/world.md lists them with their
reasons); ``WorldProtocol()`` is the demo, :meth:`WorldProtocol.reduced` the CI test's 32 px world.
Each step leaves its output in the folder and is skipped when found complete on a second run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tokencompose.tasks.demo.world_report import GROUNDED, PLAIN, write_report

Progress = Callable[[str], None]

PAPER_TOKEN_WEIGHT, PAPER_PIXEL_WEIGHT = 1e-3, 5e-5
START_FILE = "start.json"    # beside the start model: the fits it was made with


@dataclass(frozen=True)
class WorldProtocol:
    seed: int = 0                  # world, model, training and generation seeds
    image_size: int = 64
    train_images: int = 2000
    test_images: int = 200         # a second world (seed + 1) with every pair, for the attention IoU
    vae_steps: int = 300           # the random VAE fitted to the world (reconstruction), shared by both models
    vae_batch: int = 16
    # protocol v2: the random text encoder fitted contrastively (CLIP loss, a tiny vision tower) to the training
    # world's (image, caption) pairs so that its nouns' states differ, as a pretrained CLIP's do; then frozen
    text_encoder_steps: int = 300
    text_encoder_batch: int = 64
    text_encoder_lr: float = 1e-3
    train_steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-3
    images_per_prompt: int = 4     # 56 prompts (every 5 of the 8 categories) x this, per model
    generation_steps: int = 25
    guidance_scale: float = 7.5
    detector_threshold: float = 0.5
    bootstrap_samples: int = 2000
    threads: int = 1               # torch threads: on a shared 2-core machine one is far faster under load
    # the retraining round (tasks/demo/world_retrain.py): the world grows, a candidate trains from the current model
    grow_images: int = 500
    retrain_steps: int = 100
    retrain_images_per_prompt: int = 2
    retrain_prompts: int | None = None   # the first n of the 56 prompts; None: all

    @classmethod
    def reduced(cls) -> "WorldProtocol":
        """The CI test's world: 32 px, few images and steps, attention IoU only (no MultiGen)."""
        # no text encoder fit: with it the correct model failed the IoU criterion (docs/world.md, protocol v2)
        return cls(image_size=32, train_images=400, test_images=60, vae_steps=0, train_steps=150, text_encoder_steps=0,
                   images_per_prompt=1, generation_steps=10, grow_images=100, retrain_steps=20,
                   retrain_images_per_prompt=1, retrain_prompts=16)


def say_to(progress: Progress | None) -> Progress:
    start = time.monotonic()

    def say(message: str) -> None:
        line = f"[world {time.monotonic() - start:6.0f}s] {message}"
        (progress or print)(line)
    return say


def make_sources(out: Path, protocol: WorldProtocol) -> tuple[Path, Path]:
    from tokencompose.tasks.source.world import WORLD_FILE, write_world

    train, test = out / "source" / "train", out / "source" / "test"
    if not (train / WORLD_FILE).is_file():
        write_world(train, protocol.train_images, protocol.seed, protocol.image_size)
    if not (test / WORLD_FILE).is_file():
        write_world(test, protocol.test_images, protocol.seed + 1, protocol.image_size, held_out=(), first_id=100001)
    return train, test


def build_config(source: Path, out: Path):
    """The BuildConfig of a world source (PNG kept: its masks are the drawn pixels)."""
    from tokencompose.schemas.config import BuildConfig

    return BuildConfig.model_validate({
        "source": {"images_dir": str(source / "images"), "captions_json": str(source / "captions.json"),
                   "instances_json": str(source / "instances.json")},
        "output": {"out_dir": str(out), "shard_size": 500, "image_field": "png"}})


def build(source: Path, out: Path) -> Path:
    """The normal offline build of a world source."""
    from tokencompose.schemas.reports import MANIFEST_FILE
    from tokencompose.tasks.shards.dataset import build_directly

    if not (out / MANIFEST_FILE).is_file():
        build_directly(build_config(source, out))
    return out


def shard_pattern(dataset: Path) -> str:
    return str(dataset / "shards" / "*.tar")


def make_start_model(out: Path, source: Path, protocol: WorldProtocol, say: Progress) -> Path:
    """The random tiny SD both models start from, its VAE fitted to the world first (else the images a
    model generates decode through a random decoder into noise), then its text encoder fitted to the
    training world's (image, caption) pairs when the protocol asks (v2: nouns' states less alike, as a
    pretrained CLIP's are; docs/world.md)."""
    from tokencompose.tasks.training.toy import save_random_pipeline

    model = out / "models" / "start"
    if (model / "model_index.json").is_file():
        check_start_model(model, protocol)
        return model
    staging = out / "models" / ".start"
    save_random_pipeline(staging, "tiny", seed=protocol.seed)
    if protocol.vae_steps:
        loss = fit_vae(staging / "vae", source / "images", protocol)
        say(f"VAE fitted to the world: {protocol.vae_steps} steps, reconstruction MSE {loss:.4f}")
    if protocol.text_encoder_steps:
        loss = fit_text_encoder(staging, source, protocol)
        say(f"text encoder fitted to the world: {protocol.text_encoder_steps} steps, contrastive loss {loss:.3f}")
    (staging / START_FILE).write_text(json.dumps(start_settings(protocol), indent=1))
    staging.rename(model)
    return model


def start_settings(protocol: WorldProtocol) -> dict:
    """The protocol fields a start model is made from."""
    return {name: getattr(protocol, name) for name in ("seed", "vae_steps", "vae_batch", "text_encoder_steps",
                                                       "text_encoder_batch", "text_encoder_lr")}


def check_start_model(model: Path, protocol: WorldProtocol) -> None:
    """Refuse a start model made with other settings (the models trained from it would be reused too).
    One made before the record existed (protocol v1) had no text encoder fit."""
    record = model / START_FILE
    made = json.loads(record.read_text()) if record.is_file() else {"text_encoder_steps": 0}
    wanted = start_settings(protocol)
    differ = sorted(name for name in made if made[name] != wanted.get(name))
    if differ:
        raise ValueError(f"{model} was made with other settings ({', '.join(f'{n}={made[n]}' for n in differ)}; "
                         f"this protocol: {', '.join(f'{n}={wanted[n]}' for n in differ)}): remove models/, runs/ "
                         f"and evaluation/ in {model.parent.parent} to make and evaluate the models again")


def fit_vae(vae_dir: Path, images_dir: Path, protocol: WorldProtocol) -> float:
    """Train the VAE to reconstruct the world's images (MSE + a small KL term); saved in place."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    torch.manual_seed(protocol.seed)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    files = sorted(images_dir.glob("*.png"))
    data = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    data = data.float() / 127.5 - 1.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(protocol.seed)
    recent: list[float] = []
    vae.train()
    for _ in range(protocol.vae_steps):
        batch = data[torch.randint(0, len(data), (protocol.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        mse = torch.nn.functional.mse_loss(reconstruction, batch)
        (mse + 1e-6 * posterior.kl().mean()).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [mse.item()])[-20:]
    vae.eval()
    vae.save_pretrained(vae_dir)
    return float(np.mean(recent))


def world_pairs(source: Path):
    """The world's images (N x 3 x H x W in [-1, 1]) and their captions, in image-id order."""
    import numpy as np
    import torch
    from PIL import Image

    captions = json.loads((source / "captions.json").read_text())
    files = {image["id"]: image["file_name"] for image in captions["images"]}
    caption_of = {a["image_id"]: a["caption"] for a in captions["annotations"]}
    ids = sorted(caption_of)
    pixels = np.stack([np.asarray(Image.open(source / "images" / files[i]).convert("RGB")) for i in ids])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, [caption_of[i] for i in ids]


def fit_text_encoder(model: Path, source: Path, protocol: WorldProtocol) -> float:
    """Train the model's text encoder as the text tower of a tiny CLIP on the world's (image, caption)
    pairs (the contrastive loss, in-batch negatives); the text tower is saved in place of the encoder.
    Returns the mean loss of the last 20 steps."""
    import numpy as np
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(protocol.seed)
    encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    hidden = encoder.config.hidden_size
    size = protocol.image_size
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=size, patch_size=max(1, size // 8), num_channels=3)
    clip = CLIPModel(CLIPConfig(text_config=encoder.config.to_dict(), vision_config=vision, projection_dim=hidden))
    clip.text_model.load_state_dict(encoder.text_model.state_dict())
    images, captions = world_pairs(source)
    # padded to the batch's longest caption: the text tower is causal, so the states up to the end token
    # are those of the 77-token padding the pipeline uses
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    optimizer = torch.optim.AdamW(clip.parameters(), lr=protocol.text_encoder_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(protocol.seed)
    recent: list[float] = []
    clip.train()
    for _ in range(protocol.text_encoder_steps):
        batch = torch.randperm(len(captions), generator=generator)[:protocol.text_encoder_batch]
        ids, mask = tokens.input_ids[batch], tokens.attention_mask[batch]
        length = int(mask.sum(1).max())
        loss = clip(input_ids=ids[:, :length], attention_mask=mask[:, :length], pixel_values=images[batch],
                    return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.eval()
    encoder.save_pretrained(model / "text_encoder")
    return float(np.mean(recent))


def train_model(name: str, start: Path, shards: str, out: Path, protocol: WorldProtocol, grounded: bool) -> Path:
    """One training run; the two differ only in the grounding loss weights (0, or the paper's)."""
    from tokencompose.schemas.training import TrainConfig
    from tokencompose.tasks.training.trainer import train

    run_dir = out / "runs" / name
    pipeline = run_dir / "pipeline"
    if (pipeline / "model_index.json").is_file():
        return pipeline
    config = TrainConfig(pretrained_model=start, shards=[shards], output_dir=run_dir, max_steps=protocol.train_steps,
                         checkpoint_every=protocol.train_steps, **train_settings(protocol, grounded))
    result = train(config)
    return result.pipeline_dir or pipeline


def train_settings(protocol: WorldProtocol, grounded: bool) -> dict:
    """The TrainConfig fields of a world training besides the model, data, output and length."""
    return {"resolution": protocol.image_size, "train_batch_size": protocol.batch_size,
            "gradient_accumulation_steps": 1, "learning_rate": protocol.learning_rate, "num_workers": 0,
            "shuffle_buffer": 256, "gradient_checkpointing": False, "log_every": 10, "export": True,
            "seed": protocol.seed, "token_weight": PAPER_TOKEN_WEIGHT if grounded else 0.0,
            "pixel_weight": PAPER_PIXEL_WEIGHT if grounded else 0.0}


def write_prompts(out: Path) -> Path:
    from tokencompose.tasks.source.world import prompt_rows

    path = out / "prompts.json"
    path.write_text(json.dumps(prompt_rows(), indent=1))
    return path


def evaluate(out: Path, pipelines: dict[str, Path], prompts: Path, test_shards: str, protocol: WorldProtocol,
             multigen: bool = True):
    """The normal evaluation (tasks/multigen/run.py) of both models in one run: MultiGen over the
    world's prompts with the world's detector, and the attention-mask IoU on the test world."""
    from tokencompose.schemas.evaluation import EvaluateConfig
    from tokencompose.tasks.multigen.run import evaluate_models

    config = EvaluateConfig.model_validate({
        "pipelines": [str(p) for p in pipelines.values()], "labels": list(pipelines), "out_dir": str(out / "evaluation"),
        **evaluation_settings(prompts, protocol, protocol.images_per_prompt, multigen),
        "metrics": {"grounding": {"shards": [test_shards]}}})
    return config, evaluate_models(config, device="cpu")


def evaluation_settings(prompts: Path, protocol: WorldProtocol, images_per_prompt: int, multigen: bool = True) -> dict:
    """The EvaluateConfig sections of a world evaluation: the world's prompts and its exact detector."""
    from tokencompose.tasks.multigen.detection import WORLD_DETECTOR

    return {"benchmark": {"file": str(prompts), "limit": None if multigen else 1},
            "generation": {"images_per_prompt": images_per_prompt, "seed": protocol.seed,
                           "steps": protocol.generation_steps, "guidance_scale": protocol.guidance_scale,
                           "resolution": protocol.image_size, "batch_size": 16, "prompts_per_shard": 8},
            "detection": {"detector": WORLD_DETECTOR, "threshold": protocol.detector_threshold, "batch_size": 16},
            "report": {"bootstrap_samples": protocol.bootstrap_samples, "grid_prompts": 4, "grid_images": 4,
                       "attention_prompts": 2 if multigen else 0},
            "models": {"device": "cpu"}}


def run_world_demo(out: Path, protocol: WorldProtocol = WorldProtocol(), progress: Progress | None = None,
                   multigen: bool = True) -> Path:
    """The whole loop into ``out``; returns the report's path."""
    import torch

    torch.set_num_threads(protocol.threads)
    say = say_to(progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(asdict(protocol), indent=1))
    train_source, test_source = make_sources(out, protocol)
    say(f"world generated: {protocol.train_images} training and {protocol.test_images} test images, "
        f"{protocol.image_size} px")
    train_data = build(train_source, out / "data" / "train")
    test_data = build(test_source, out / "data" / "test")
    say("world built with the offline build")
    start = make_start_model(out, train_source, protocol, say)
    pipelines = {}
    for name, grounded in ((PLAIN, False), (GROUNDED, True)):
        say(f"training {name} ({protocol.train_steps} steps of {protocol.batch_size})")
        pipelines[name] = train_model(name, start, shard_pattern(train_data), out, protocol, grounded)
    say("evaluating both models")
    config, report = evaluate(out, pipelines, write_prompts(out), shard_pattern(test_data), protocol, multigen)
    path = write_report(out, config, report, protocol, multigen)
    say(f"report: {path}")
    return path

