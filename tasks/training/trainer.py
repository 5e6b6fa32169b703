"""The training loop: L_LDM + lambda * L_token + gamma * L_pixel (+ spatial), with accelerate.

Reproducibility: the noise, timestep and VAE sample of every training sample come from a generator
seeded by ``(seed, rank, index of the sample in the rank's stream)``, so a batch of 2 draws exactly
what two accumulated batches of 1 draw, and a resumed run draws what an uninterrupted one would.

Bad data: before the models load, every shard is pre-scanned (:func:`~.samples.scan_shards`: tar
structure, JSON members, image headers, duplicate keys); while training, the samples the stream
skipped are added to the run's :class:`~.samples.DataQuality`. Either way, data past the
configured ceiling stops the run with :class:`~.samples.TooMuchBadData`, naming the worst shards.
The ledger and each reader's raw position are in every checkpoint, so a resumed run continues past
what it skipped with the counts it had.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, set_seed
from diffusers.optimization import get_scheduler

from tokencompose.tasks.training.attention import install_processors, layer_resolutions, paper_layers
from tokencompose.schemas.curation import Exclusions, read_exclusions
from tokencompose.schemas.training import TRAIN_CONFIG_FILE, TrainConfig
from tokencompose.tasks.shards.patterns import expand_shards
from tokencompose.tasks.training.data import STAT_KEYS, Batch, Preprocessor, make_loader
from tokencompose.tasks.training.export import CURVE_FILE, PIPELINE_DIR, export_pipeline, plot_loss_curves, read_metrics
from tokencompose.tasks.training.losses import Targets, diffusion_target, group_name, grounding_losses
from tokencompose.tasks.training.samples import (FIRST_LOGGED, UNREADABLE_SHARD, DataError, DataQuality, DataScan, Skip,
                                                 TooMuchBadData, scan_shards)
from tokencompose.tasks.training.components import Components, load_components
from tokencompose.tasks.training.watch import (TRACKER_DIR, Validation, hyperparameters, log_validation, run_validation,
                                               tracker_problems, tracker_values, trackers)
from tokencompose.tasks.progress import Progress, run_logger, timed

log = logging.getLogger("tokencompose.tasks.training")

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
PLAN_FILE = "memory_plan.json"
METRICS_FILE = "metrics.jsonl"

ProgressCallback = Callable[[int, int, dict], None]
ValidationCallback = Callable[[Validation], None]


@dataclass
class TrainState:
    step: int = 0                  # optimizer steps done
    samples: int = 0               # samples this rank consumed
    stats: Counter = field(default_factory=Counter)
    positions: list[int] | None = None   # raw samples each reader role consumed (skipped ones included)
    quality: dict | None = None          # DataQuality.to_dict() at the checkpoint

    def to_json(self) -> str:
        return json.dumps({"step": self.step, "samples": self.samples, "stats": dict(self.stats),
                           "positions": self.positions, "quality": self.quality}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        data = json.loads(text)
        return cls(step=data["step"], samples=data["samples"], stats=Counter(data["stats"]),
                   positions=data.get("positions"), quality=data.get("quality"))


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    pipeline_dir: Path | None
    loss_curve: Path | None
    last_checkpoint: Path | None
    stats: dict[str, int]
    last_metrics: dict
    data_quality: dict = field(default_factory=dict)   # DataQuality.summary(): unusable samples by reason


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number: nothing after it is worth keeping."""


# fp16's loss scaler skips the steps whose gradients overflow; this many in a row means divergence.
FP16_NONFINITE_STEPS = 20


def sample_seed(seed: int, rank: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{rank}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class ActivationCost:
    """Activation memory of one forward + backward (weights, gradients, optimizer state excluded):
    ``base + per_sample * batch`` bytes, from a probe at two batch sizes."""
    base: int
    per_sample: int

    @classmethod
    def from_probe(cls, batch_a: int, bytes_a: int, batch_b: int, bytes_b: int) -> "ActivationCost":
        per_sample = max(1, (bytes_b - bytes_a) // (batch_b - batch_a))
        return cls(base=max(0, bytes_a - per_sample * batch_a), per_sample=per_sample)

    def fits(self, budget: int) -> int:
        return max(0, (budget - self.base) // self.per_sample)


@dataclass(frozen=True)
class MemoryPlan:
    batch_size: int
    accumulation: int
    gradient_checkpointing: bool
    reason: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


# fp32 weights, fp32 gradients, AdamW's two fp32 moments (mixed precision keeps fp32 master weights)
BYTES_PER_TRAINED_PARAMETER = 16


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def plan_memory(total_bytes: int, parameters: int, plain: ActivationCost, checkpointed: ActivationCost | None, *,
                effective_batch: int, min_batch: int = 8, other_bytes: int = 0, headroom: float = 0.9,
                bytes_per_parameter: int = BYTES_PER_TRAINED_PARAMETER) -> MemoryPlan:
    """Per-device batch, gradient checkpointing and accumulation for ``effective_batch`` samples per step.

    The budget is ``headroom * total_bytes`` less the trained parameters' weights, gradients and
    optimizer state and ``other_bytes`` (frozen models, buffers). The batch divides ``effective_batch``
    (so the step sees exactly that many samples) and is the largest that fits; checkpointing is used
    only when the batch that fits without it is below ``min(min_batch, effective_batch)`` and
    checkpointing fits a larger one.
    """
    budget = int(total_bytes * headroom) - parameters * bytes_per_parameter - other_bytes
    want = min(min_batch, effective_batch)
    fits_plain = min(plain.fits(budget), effective_batch)
    if fits_plain >= want:
        batch = _largest_divisor(effective_batch, fits_plain)
        return MemoryPlan(batch, effective_batch // batch, False,
                          f"{fits_plain} samples fit without checkpointing (wanted {want})")
    fits_ckpt = min(checkpointed.fits(budget), effective_batch) if checkpointed is not None else 0
    batch_plain = _largest_divisor(effective_batch, fits_plain) if fits_plain >= 1 else 0
    batch_ckpt = _largest_divisor(effective_batch, fits_ckpt) if fits_ckpt >= 1 else 0
    if batch_ckpt > batch_plain:
        return MemoryPlan(batch_ckpt, effective_batch // batch_ckpt, True,
                          f"{fits_plain} samples fit without checkpointing, {fits_ckpt} with it (wanted {want})")
    if batch_plain:
        return MemoryPlan(batch_plain, effective_batch // batch_plain, False,
                          f"{fits_plain} samples fit without checkpointing (wanted {want}); checkpointing fits no "
                          "larger batch")
    gib = 2 ** 30
    raise MemoryError(f"not even one sample fits: {total_bytes / gib:.1f} GiB x {headroom} less "
                      f"{(parameters * bytes_per_parameter + other_bytes) / gib:.1f} GiB of parameters, gradients, "
                      f"optimizer state and frozen models leaves {budget / gib:.2f} GiB; one sample needs "
                      f"{(plain.base + plain.per_sample) / gib:.2f} GiB"
                      + (f" ({(checkpointed.base + checkpointed.per_sample) / gib:.2f} GiB with checkpointing)"
                         if checkpointed is not None else ""))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (its state file is written last)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).exists()] if root.exists() else []
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


class Trainer:
    def __init__(self, config: TrainConfig, progress: ProgressCallback | None = None,
                 accelerator: Accelerator | None = None, validated: ValidationCallback | None = None):
        self.config = config
        self.progress = progress
        self.validated = validated
        problems = tracker_problems(config.report_to)
        if problems:  # before anything loads
            raise ModuleNotFoundError("; ".join(problems))
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision, log_with=trackers(config.report_to) or None,
            project_config=ProjectConfiguration(project_dir=str(config.output_dir),
                                                logging_dir=str(Path(config.output_dir) / TRACKER_DIR)))
        self.state = TrainState()
        self._nonfinite_steps = 0
        self._data_wait = 0.0  # seconds spent waiting for the loader since the last log record
        self._pending: list[Skip] = []  # skips met since the last ceiling check, maybe already known
        self._setup()

    # ----------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)
        self.urls = expand_shards(cfg.shards)
        self.scan = self._scan_data()  # before any model loads: too much bad data costs seconds, not minutes
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        with timed(f"loading the model to train from {cfg.pretrained_model}", run_logger(log)):
            self.models: Components = load_components(cfg.pretrained_model)
        m = self.models
        if cfg.resolution is None:  # the model's own; resolved here so that every file of the run names it
            self.config = cfg = cfg.model_copy(update={"resolution": m.native_resolution})
        assert cfg.resolution is not None
        if cfg.resolution % m.vae_scale_factor:
            raise ValueError(f"resolution {cfg.resolution} is not a multiple of the VAE's factor {m.vae_scale_factor} "
                             f"({cfg.pretrained_model})")
        self.latent_size = cfg.resolution // m.vae_scale_factor
        # which blocks train and their map sides come from this UNet's layout, not from SD1.4's
        self.train_layers = cfg.train_layers or paper_layers(m.unet)
        self.resolutions = layer_resolutions(m.unet, self.train_layers, self.latent_size)
        # with every grounding weight at 0 this is plain fine-tuning: the fused attention everywhere
        self.grounding = bool(cfg.token_weight or cfg.pixel_weight or cfg.spatial_weight)
        self.store = install_processors(m.unet, cfg.processor_targets(self.train_layers) if self.grounding else {}, self.resolutions)
        # every rank logs the same keys, also for a batch without nouns (the reductions must match)
        terms = ("token", "pixel", "spatial") if cfg.spatial_weight else ("token", "pixel")
        groups = [group_name(r) for r in sorted(set(self.resolutions.values()))]
        self.term_names = [*terms, *(f"{t}/{g}" for t in terms for g in groups)] if self.grounding else []
        frozen_models: tuple[torch.nn.Module, ...] = (m.vae, m.text_encoder)
        for frozen in frozen_models:
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(acc.device)
            if self.weight_dtype != torch.float32:
                frozen.to(dtype=self.weight_dtype)
        m.unet.to(acc.device)  # before the optimizer: fused AdamW needs its parameters on the GPU
        m.unet.train()
        self.output_dir = Path(cfg.output_dir)
        self.plan = self._memory_plan()
        self.batch_size, self.accumulation = self.plan.batch_size, self.plan.accumulation
        if self.plan.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
        cuda = acc.device.type == "cuda"
        if cfg.channels_last and cuda:
            m.unet.to(memory_format=torch.channels_last)
        if cfg.compile_unet:
            m.unet.compile()  # in place: state-dict keys and the module's class stay as they are
        params = list(m.unet.parameters())
        fused = cfg.fused_optimizer and cuda and all(p.is_cuda and p.is_floating_point() for p in params)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                                      **({"fused": True} if fused else {}))
        self.fused_optimizer = fused
        # accelerate's scheduler steps once per process per optimizer step, hence the scaling
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                  num_training_steps=cfg.max_steps * acc.num_processes)
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(m.unet, optimizer, scheduler)
        self.preprocess = Preprocessor(m.tokenizer, cfg.resolution, sorted(set(self.resolutions.values())),
                                       cfg.mask_antialias, cfg.image_field, cfg.images,
                                       read_exclusions(cfg.exclude_flagged) if cfg.exclude_flagged else Exclusions())
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / TRAIN_CONFIG_FILE).write_text(cfg.to_json())
            (self.output_dir / PLAN_FILE).write_text(self.plan.to_json())
        if trackers(cfg.report_to):
            acc.init_trackers(cfg.tracker_project, config=hyperparameters(cfg))
        if cfg.resume:
            self._resume()
        if self.state.positions is None:
            self.state.positions = [0] * max(1, cfg.num_workers)

    def _scan_data(self) -> DataScan:
        """Pre-scan the shards (on the main process; the others get its result), log what is unusable
        and stop when it is past the ceiling."""
        cfg, acc = self.config, self.accelerator
        scan = scan_shards(self.urls, cfg.image_field, cfg.images) if acc.is_main_process else None
        if acc.num_processes > 1:
            scan = broadcast_object_list([scan])[0]
        assert scan is not None
        self.quality = DataQuality.from_scan(scan)
        log.info("pre-scan: %d samples in %d shard(s), %d unusable %s, %d shard(s) unreadable (%.2f s)",
                 scan.samples, len(scan.shards), len(self.quality.bad), self.quality.counts(),
                 len(self.quality.unreadable), scan.seconds)
        self._log_first([Skip(shard, -1, None, UNREADABLE_SHARD, detail)
                         for shard, detail in self.quality.unreadable.items()] + list(self.quality.bad.values()))
        self._check_ceiling()
        return scan

    def _log_first(self, skips: list[Skip]) -> None:
        """The shard, key and detail of the first FIRST_LOGGED unusable samples of each reason."""
        if not self.accelerator.is_main_process:
            return
        logged: Counter = Counter()
        for skip in skips:
            if skip.reason == UNREADABLE_SHARD:
                log.warning("unreadable shard skipped: %s", skip.detail)
            elif skip.where in self.quality.first.get(skip.reason, ()) and logged[skip.reason] < FIRST_LOGGED:
                logged[skip.reason] += 1
                log.warning("unusable sample %s skipped: %s: %s", skip.where, skip.reason, skip.detail)

    def _check_ceiling(self) -> None:
        problem = self.quality.ceiling_problem(self.config.max_bad_sample_fraction, self.config.max_unreadable_shards)
        if problem:
            raise TooMuchBadData(problem)
        if not self.quality.samples:
            raise DataError(f"no sample to train on in {len(self.urls)} shard(s): every shard is unreadable")

    def _memory_plan(self) -> MemoryPlan:
        """The config's batch, accumulation and checkpointing, or with ``auto_batch`` on CUDA a plan from
        the GPU's memory and a probe (a resumed run keeps its checkpoint's plan: the data stream depends on it)."""
        cfg, acc = self.config, self.accelerator
        fixed = MemoryPlan(cfg.train_batch_size, cfg.gradient_accumulation_steps, cfg.gradient_checkpointing,
                           "the configuration's values")
        if not cfg.auto_batch:
            return fixed
        if acc.device.type != "cuda":
            log.info("auto_batch: no CUDA device, the memory probe is skipped; using the configuration's batch %d x "
                     "accumulation %d, gradient checkpointing %s", fixed.batch_size, fixed.accumulation,
                     fixed.gradient_checkpointing)
            return MemoryPlan(fixed.batch_size, fixed.accumulation, fixed.gradient_checkpointing,
                              "auto_batch without CUDA: the configuration's values")
        checkpoint = latest_checkpoint(self.output_dir) if cfg.resume else None
        if checkpoint is not None and (checkpoint / PLAN_FILE).exists():
            plan = MemoryPlan(**json.loads((checkpoint / PLAN_FILE).read_text()))
            log.info("auto_batch: resuming with the checkpoint's plan %s", plan)
            return plan
        unet = self.models.unet
        effective = cfg.effective_batch or cfg.train_batch_size * cfg.gradient_accumulation_steps
        parameters = sum(p.numel() for p in unet.parameters() if p.requires_grad)
        gc.collect()
        torch.cuda.empty_cache()
        other = torch.cuda.memory_allocated(acc.device) - 4 * parameters   # frozen models, buffers
        plain = self.probe_activation_cost(checkpointing=False)
        checkpointed = self.probe_activation_cost(checkpointing=True)
        total = torch.cuda.get_device_properties(acc.device).total_memory
        plan = plan_memory(total, parameters, plain, checkpointed, effective_batch=effective,
                           min_batch=cfg.auto_min_batch, other_bytes=max(0, other), headroom=cfg.memory_headroom)
        log.info("auto_batch: %.1f GiB GPU, %d M trained parameters, activations %s (checkpointed %s) -> batch %d x "
                 "accumulation %d, gradient checkpointing %s (%s)", total / 2**30, parameters // 10**6, plain,
                 checkpointed, plan.batch_size, plan.accumulation, plan.gradient_checkpointing, plan.reason)
        return plan

    def probe_activation_cost(self, checkpointing: bool, slots: int = 8) -> ActivationCost:
        """CUDA: peak memory of a forward + backward above the memory before it, at batch 1 and 2 (random
        inputs, ``slots`` captured noun columns); gradients are allocated by a warm-up pass first."""
        m, acc = self.models, self.accelerator
        unet = m.unet
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        latent = self.latent_size
        peaks = {}
        for batch in (1, 1, 2):  # the first pass allocates the gradients
            noisy = torch.randn(batch, unet.config.in_channels, latent, latent, device=acc.device)
            timesteps = torch.randint(0, 1000, (batch,), device=acc.device)
            hidden = torch.randn(batch, 77, unet.config.cross_attention_dim, device=acc.device)
            index = torch.arange(1, slots + 1, device=acc.device).expand(batch, slots) if self.grounding else None
            torch.cuda.synchronize(acc.device)
            base = torch.cuda.memory_allocated(acc.device)
            torch.cuda.reset_peak_memory_stats(acc.device)
            self.store.begin(index)
            with acc.autocast():
                prediction = unet(noisy, timesteps, hidden).sample
            maps = self.store.end()
            loss = prediction.float().pow(2).mean() + sum(a.float().mean() for a in maps.values())
            loss.backward()
            del prediction, maps, loss
            torch.cuda.synchronize(acc.device)
            peaks[batch] = torch.cuda.max_memory_allocated(acc.device) - base
            unet.zero_grad(set_to_none=False)
        unet.zero_grad(set_to_none=True)
        unet.disable_gradient_checkpointing()
        return ActivationCost.from_probe(1, peaks[1], 2, peaks[2])

    def _resume(self) -> None:
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is None:
            return
        saved = TrainConfig.from_file(checkpoint / TRAIN_CONFIG_FILE)
        for name in ("train_batch_size", "gradient_accumulation_steps", "seed", "shards", "shuffle_buffer", "num_workers"):
            if getattr(saved, name) != getattr(self.config, name):
                log.warning("resuming with %s changed (%r -> %r): the data stream will not continue exactly",
                            name, getattr(saved, name), getattr(self.config, name))
        self.accelerator.load_state(str(checkpoint))
        own = checkpoint / f"rank-{self.accelerator.process_index}.json"
        self.state = TrainState.from_json((own if own.exists() else checkpoint / STATE_FILE).read_text())
        log.info("resumed from %s at step %d", checkpoint, self.state.step)
        self._resume_data(saved)
        if self.accelerator.is_main_process:  # drop metrics logged after the checkpoint
            metrics = self.output_dir / METRICS_FILE
            kept = [r for r in read_metrics(metrics) if r["step"] <= self.state.step]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _resume_data(self, saved: TrainConfig) -> None:
        """The checkpoint's ledger of unusable data joined with this run's pre-scan, and each reader's
        raw position (a checkpoint from before positions were kept: the batches each role produced)."""
        if self.state.quality is not None:
            resumed = DataQuality.from_dict(self.state.quality)
            resumed.samples = self.quality.samples
            resumed.merge(self.quality)
            self.quality = resumed
            self._check_ceiling()
        workers = max(1, self.config.num_workers)
        if self.state.positions is None or len(self.state.positions) != workers:
            consumed = self.state.step * self.accumulation
            self.state.positions = [len(range(role, consumed, workers)) * self.batch_size for role in range(workers)]

    # ------------------------------------------------------------------ step
    def _draws(self, shape: tuple[int, ...], count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample timestep, VAE-sampling noise and diffusion noise."""
        device = self.accelerator.device
        timesteps, vae_noise, noise = [], [], []
        for i in range(count):
            gen = torch.Generator(device=device).manual_seed(
                sample_seed(self.config.seed, self.accelerator.process_index, self.state.samples + i))
            timesteps.append(torch.randint(0, self.models.noise_scheduler.config.num_train_timesteps, (1,),
                                           generator=gen, device=device))
            vae_noise.append(torch.randn(shape, generator=gen, device=device))
            noise.append(torch.randn(shape, generator=gen, device=device))
        return torch.cat(timesteps), torch.stack(vae_noise), torch.stack(noise)

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the batch of the per-sample objective, and the per-term batch means (detached)."""
        cfg, m, device = self.config, self.models, self.accelerator.device
        batch = batch.to(device)
        with torch.no_grad():
            hidden = m.text_encoder(batch.input_ids)[0].float()
            posterior = m.vae.encode(batch.pixel_values.to(self.weight_dtype)).latent_dist
            timesteps, vae_noise, noise = self._draws(tuple(posterior.mean.shape[1:]), batch.size)
            latents = (posterior.mean.float() + posterior.std.float() * vae_noise) * m.vae.config.scaling_factor
            noisy = m.noise_scheduler.add_noise(latents, noise, timesteps)
            target = diffusion_target(m.noise_scheduler, latents, noise, timesteps)
        grounded = self.grounding and batch.token_index.shape[1] > 0
        self.store.begin(batch.token_index if grounded else None)
        with self.accelerator.autocast():
            prediction = self.unet(noisy, timesteps, hidden).sample
        maps = self.store.end()
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        terms = {"ldm": per_sample, **{name: per_sample.new_zeros(batch.size) for name in self.term_names}}
        if maps:
            targets = Targets(batch.slot_noun, batch.noun_valid, batch.masks, batch.relations, batch.relation_valid)
            terms.update(grounding_losses(maps, self.resolutions, targets, cfg.aggregation, cfg.spatial_weight > 0))
            weights = {"token": cfg.token_weight, "pixel": cfg.pixel_weight, "spatial": cfg.spatial_weight}
            for term, weight in weights.items():
                if term in terms and weight:
                    per_sample = per_sample + weight * terms[term]
        loss = per_sample.mean()
        logs = {"loss": loss.detach(), **{k: v.detach().mean() for k, v in terms.items()}}
        return loss, logs

    def train_step(self, batches) -> dict[str, torch.Tensor]:
        """One optimizer step over ``self.accumulation`` batches (the plan's, by default the config's
        gradient_accumulation_steps); returns averaged logs."""
        cfg, acc = self.config, self.accelerator
        accum = self.accumulation
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            waited = time.perf_counter()
            batch = next(batches)
            self._data_wait += time.perf_counter() - waited
            self._absorb(batch)
            sync = micro == accum - 1
            with acc.no_sync(self.unet) if not sync else nullcontext():
                loss, logs = self.compute_loss(batch)
                acc.backward(loss / accum)
            self.state.samples += batch.size
            self.state.stats.update(batch.stats)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value / accum
        self._check_data()
        self._check_finite(sums["loss"])
        if cfg.max_grad_norm is not None:
            acc.clip_grad_norm_(self.unet.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return sums

    def _absorb(self, batch: Batch) -> None:
        """Note where the batch's reader role stands and what the stream skipped on the way."""
        assert self.state.positions is not None
        self.state.positions[batch.role] = batch.position
        self._pending += [s for s in batch.skipped if f"{s.shard}#{s.index}" not in self.quality.bad
                          and not (s.index < 0 and s.shard in self.quality.unreadable)]
        if batch.bad_masks and self.accelerator.is_main_process:
            for where in batch.bad_masks[:FIRST_LOGGED]:
                named = self.quality.first.setdefault("nouns_bad_mask", [])
                if len(named) < FIRST_LOGGED and where not in named:
                    named.append(where)
                    log.warning("noun with a bad mask skipped in %s", where)

    def _check_data(self) -> None:
        """Add the skips every rank met to the ledger (the same on every rank) and stop past the ceiling."""
        acc, pending = self.accelerator, self._pending
        self._pending = []
        if acc.num_processes > 1:
            found = acc.reduce(torch.tensor([len(pending)], device=acc.device), reduction="sum").item()
            pending = gather_object(pending) if found else []
        news = [skip for skip in pending if self.quality.add(skip)]
        if news:
            self._log_first(news)
            self._check_ceiling()

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Raise TrainingDiverged when any rank's loss is NaN or infinite (under fp16, only after
        FP16_NONFINITE_STEPS such steps in a row: the loss scaler recovers from single overflows)."""
        bad = self.accelerator.reduce(torch.tensor([float(not torch.isfinite(loss).item())],
                                                   device=self.accelerator.device), reduction="sum").item() > 0
        self._nonfinite_steps = self._nonfinite_steps + 1 if bad else 0
        allowed = FP16_NONFINITE_STEPS if self.accelerator.mixed_precision == "fp16" else 1
        if self._nonfinite_steps >= allowed:
            raise TrainingDiverged(f"the loss is {loss.item()} at step {self.state.step + 1}: training diverged "
                                   f"(learning rate {self.config.learning_rate}); nothing is exported")

    # ------------------------------------------------------------------ loop
    def loader(self):
        cfg, acc = self.config, self.accelerator
        return make_loader(self.scan.readable, self.preprocess, batch_size=self.batch_size,
                           num_workers=cfg.num_workers, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                           rank=acc.process_index, world_size=acc.num_processes,
                           skip_batches=self.state.step * self.accumulation, positions=self.state.positions,
                           duplicates=self.scan.duplicates)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = self.output_dir / CHECKPOINTS_DIR / f"step-{self.state.step:08d}"
        self.state.quality = self.quality.to_dict()
        acc.save_state(str(path), safe_serialization=True)
        (path / f"rank-{acc.process_index}.json").write_text(self.state.to_json())  # each rank's own counters
        acc.wait_for_everyone()
        if acc.is_main_process:
            (path / TRAIN_CONFIG_FILE).write_text(self.config.to_json())
            (path / PLAN_FILE).write_text(self.plan.to_json())
            (path / STATE_FILE).write_text(self.state.to_json())  # last: marks the checkpoint complete
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return path

    def _prune_checkpoints(self) -> None:
        limit = self.config.checkpoints_total_limit
        if limit is None:
            return
        done = sorted((p for p in (self.output_dir / CHECKPOINTS_DIR).glob("step-*") if (p / STATE_FILE).exists()),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _record(self, logs: dict[str, torch.Tensor], samples_per_s: float) -> dict:
        reduced = {k: self.accelerator.reduce(v.detach().float().reshape(1), reduction="mean").item()
                   for k, v in sorted(logs.items())}
        stats = self.accelerator.reduce(torch.tensor([self.state.stats[k] for k in STAT_KEYS],
                                                     device=self.accelerator.device), reduction="sum").tolist()
        unusable = {"bad/unusable": self.quality.unusable(), **{f"bad/{r}": n for r, n in self.quality.counts().items()}}
        if self.quality.unreadable:
            unusable["bad/unreadable_shards"] = len(self.quality.unreadable)
        return {"step": self.state.step, **reduced, "lr": self.lr_scheduler.get_last_lr()[0],
                "samples_per_s": samples_per_s, **{f"count/{k}": int(v) for k, v in zip(STAT_KEYS, stats)},
                **unusable}

    def train(self) -> TrainResult:
        batches = iter(self.loader())
        try:
            return self._loop(batches)
        finally:
            # the stream is endless: stop the DataLoader workers now rather than whenever the iterator is collected
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _loop(self, batches) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        metrics_path = self.output_dir / METRICS_FILE
        last: dict = {}
        checkpoint = latest_checkpoint(self.output_dir)
        window_start, window_samples = time.perf_counter(), 0
        global_batch = self.batch_size * self.accumulation * acc.num_processes
        bar = Progress("training", cfg.max_steps, "step", initial=self.state.step, logger=run_logger(log)) \
            if acc.is_main_process else None
        with bar or nullcontext():
            while self.state.step < cfg.max_steps:
                logs = self.train_step(batches)
                window_samples += global_batch
                if bar is not None:
                    bar.advance(1)
                if self.state.step % cfg.log_every == 0 or self.state.step == cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    last = self._log_window(logs, metrics_path, window_samples / max(elapsed, 1e-9), elapsed)
                    window_start, window_samples = time.perf_counter(), 0
                    if bar is not None:
                        bar.postfix = f"loss {last['loss']:.4g}"
                if self.config.validation_prompts and (self.state.step % cfg.validation_every == 0
                                                       or self.state.step == cfg.max_steps):
                    self.validate()
                if self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.max_steps:
                    checkpoint = self.save_checkpoint()
        return self.finish(checkpoint, last)

    def _log_window(self, logs: dict[str, torch.Tensor], metrics_path: Path, samples_per_s: float,
                    elapsed: float) -> dict:
        """The metrics record of the steps since the last one: metrics.jsonl, the log, the trackers."""
        acc = self.accelerator
        last = self._record(logs, samples_per_s)
        last["data_wait_fraction"] = self._data_wait / max(elapsed, 1e-9)  # > ~0.05: add num_workers
        self._data_wait = 0.0
        if acc.is_main_process:
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(last) + "\n")
            log.info(format_record(last))
            if self.progress:
                self.progress(self.state.step, self.config.max_steps, last)
        if trackers(self.config.report_to):
            acc.log(tracker_values(last), step=self.state.step)
        return last

    def validate(self) -> Validation | None:
        """Validation images (and the first prompt's attention maps) with the current weights, on the
        main process; the others wait."""
        acc, validation = self.accelerator, None
        if acc.is_main_process:
            with timed(f"generating the validation images at step {self.state.step}", run_logger(log)):
                validation = run_validation(self.config, self.models, acc.unwrap_model(self.unet), self.state.step,
                                            acc.autocast())
            log_validation(acc, validation, self.config.validation_prompts)
            if self.validated:
                self.validated(validation)
        acc.wait_for_everyone()
        return validation

    def finish(self, checkpoint: Path | None, last: dict) -> TrainResult:
        acc = self.accelerator
        acc.wait_for_everyone()
        pipeline_dir = curve = None
        if acc.is_main_process:
            if self.config.export:  # processors are not part of the saved weights or config
                pipeline_dir = export_pipeline(self.config, acc.unwrap_model(self.unet), self.output_dir / PIPELINE_DIR)
            curve = plot_loss_curves(read_metrics(self.output_dir / METRICS_FILE), self.output_dir / CURVE_FILE)
        if trackers(self.config.report_to):
            acc.end_training()
        acc.wait_for_everyone()
        return TrainResult(self.output_dir, self.state.step, pipeline_dir, curve, checkpoint,
                           dict(self.state.stats), last, self.quality.summary())


def format_record(record: dict) -> str:
    parts = [f"step {record['step']}"]
    for key, value in record.items():
        if key == "step" or key.startswith(("count/", "bad/")):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    skipped = sum(record.get(f"count/{k}", 0) for k in ("nouns_no_mask", "nouns_no_token", "nouns_bad_mask", "nouns_flagged"))
    parts.append(f"nouns used {record.get('count/nouns_used', 0)}, skipped {skipped}")
    if record.get("bad/unusable"):
        reasons = ", ".join(f"{k[4:]} {v}" for k, v in record.items() if k.startswith("bad/") and k != "bad/unusable")
        parts.append(f"unusable samples {record['bad/unusable']} ({reasons})")
    return " ".join(parts)


def train(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    return Trainer(config, progress).train()
