"""One training step with TokenCompose's grounding losses vs a plain L_LDM step.

Same random-weight model, same batches, same precision, in one run:
  * time: the two variants' steps interleaved on identical batches, median of --steps each;
  * peak memory: on GPU torch.cuda.max_memory_allocated above the memory held before the step; on
    CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above its RSS before
    the step, after warm-up steps and malloc_trim, median over steps of --memory-runs subprocesses
    per variant (RSS moves by a few MiB from run to run: the allocator, not the tensors);
  * the data loader's samples/s (decode, crop, RLE masks, tokenization) with --workers workers.

    python bench/bench_train.py                      # CPU, "small" SD1.x-layout UNet at 256 px
    python bench/bench_train.py --full-sd14 --precision bf16   # GPU, SD1.4's UNet at 512 px

Prints a markdown table and writes JSON (default bench/results/train.json).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tokencompose.schemas.training import TrainConfig  # noqa: E402
from tokencompose.tasks.training.toy import PRESETS, photo_shards, save_random_pipeline  # noqa: E402

VARIANTS = ("plain", "grounded")


def config(model: Path, shards: Path, out: Path, variant: str, args) -> TrainConfig:
    weights = {} if variant == "grounded" else dict(token_weight=0.0, pixel_weight=0.0)
    return TrainConfig(pretrained_model=model, shards=[str(shards / "*.tar")], output_dir=out / variant,
                       resolution=PRESETS[args.preset]["resolution"], train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, mixed_precision=args.precision,
                       gradient_checkpointing=not args.no_checkpointing, num_workers=0, shuffle_buffer=0,
                       checkpoint_every=10**6, log_every=10**6, export=False, resume=False,
                       aggregation=args.aggregation, **weights)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fixed_batches(trainer, count: int) -> list:
    stream = iter(trainer.loader())
    return [next(stream) for _ in range(count)]


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(args) -> None:
    """Runs in a subprocess: peak RSS of one step of one variant, as JSON on stdout."""
    from tokencompose.tasks.training.trainer import Trainer

    trainer = Trainer(config(Path(args.model), Path(args.shards), Path(args.work), args.memory_child, args))
    batches = fixed_batches(trainer, 6)
    trainer.train_step(iter(batches[:2]))  # warm-up: optimizer state, allocator pools
    trainer.train_step(iter(batches[1:2]))
    peaks = []
    for batch in batches[2:]:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        trainer.train_step(iter([batch]))
        peaks.append(rss_kib("VmHWM") - base)
    print(json.dumps({"peak_kib": peaks, "base_kib": base}))


def cpu_memory(args, model: Path, shards: Path, work: Path) -> dict[str, int]:
    peaks: dict[str, list[int]] = {v: [] for v in VARIANTS}
    for variant in VARIANTS * args.memory_runs:  # RSS is noisy: medians over steps and processes
        command = [sys.executable, __file__, "--memory-child", variant, "--model", str(model), "--shards", str(shards),
                   "--work", str(work), "--preset", args.preset, "--precision", args.precision,
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--aggregation", args.aggregation]
        if args.no_checkpointing:
            command.append("--no-checkpointing")
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[variant] += json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"]
    return {v: int(statistics.median(p)) * 1024 for v, p in peaks.items()}


def gpu_memory(trainers: dict, batches: list) -> dict[str, int]:
    out = {}
    for variant, trainer in trainers.items():
        trainer.train_step(iter(batches[:1]))
        sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        trainer.train_step(iter(batches[1:2]))
        sync()
        out[variant] = torch.cuda.max_memory_allocated() - base
    return out


def loader_rate(trainer, workers: int, batches: int) -> float:
    from tokencompose.tasks.training.data import make_loader

    loader = make_loader(trainer.urls, trainer.preprocess, batch_size=1, num_workers=workers, seed=0,
                         shuffle_buffer=16)
    stream = iter(loader)
    for _ in range(max(2, workers)):  # worker start-up is not throughput
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches / (time.perf_counter() - start)
    getattr(stream, "_shutdown_workers", lambda: None)()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--full-sd14", action="store_true", help="SD1.4's UNet architecture at 512 (for a GPU)")
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--aggregation", choices=["reference", "normalized"], default="reference")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader figure")
    parser.add_argument("--loader-batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--memory-runs", type=int, default=2, help="CPU: processes per variant for the memory figure")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full_sd14:
        args.preset = "sd14"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0

    from tokencompose.tasks.training.trainer import Trainer

    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        model = save_random_pipeline(work / "model", args.preset)
        shards = photo_shards(work / "data", samples=16, per_shard=4)
        trainers = {v: Trainer(config(model, shards, work, v, args)) for v in VARIANTS}
        batches = fixed_batches(trainers["grounded"], args.warmup + args.steps)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i, batch in enumerate(batches):
            for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):  # alternate who goes first
                sync()
                start = time.perf_counter()
                trainers[variant].train_step(iter([batch]))
                sync()
                if i >= args.warmup:
                    times[variant].append(time.perf_counter() - start)
        memory = gpu_memory(trainers, batches) if gpu else cpu_memory(args, model, shards, work)
        rate = loader_rate(trainers["grounded"], args.workers, args.loader_batches)

    median = {v: statistics.median(t) for v, t in times.items()}
    unet = trainers["grounded"].accelerator.unwrap_model(trainers["grounded"].unet)
    result = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({platform.processor() or platform.machine()}, "
                                                           f"{torch.get_num_threads()} threads)",
        "preset": args.preset, "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "resolution": PRESETS[args.preset]["resolution"], "batch_size": args.batch_size, "precision": args.precision,
        "gradient_checkpointing": not args.no_checkpointing, "aggregation": args.aggregation,
        "trained_maps": len(trainers["grounded"].resolutions),
        "step_s": median, "step_s_all": times, "time_ratio": median["grounded"] / median["plain"],
        "memory_method": "torch.cuda.max_memory_allocated above the allocated memory before the step" if gpu else
                         "peak RSS (VmHWM after clear_refs) above RSS before the step; median over 4 steps "
                         f"x {args.memory_runs} subprocesses per variant",
        "peak_step_memory_bytes": memory, "memory_ratio": memory["grounded"] / memory["plain"],
        "loader_workers": args.workers, "loader_samples_per_s": rate,
        "targets": {"time_ratio": 1.10, "memory_ratio": 1.15},
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    print(f"train step, {result['device']}, preset {args.preset} ({result['unet_parameters'] / 1e6:.1f} M UNet "
          f"parameters), {result['resolution']} px, batch {args.batch_size}, precision {args.precision}\n")
    print("| measure | plain L_LDM | + token & pixel losses | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| step time (median of {args.steps}) | {median['plain'] * 1e3:.0f} ms | {median['grounded'] * 1e3:.0f} ms "
          f"| {result['time_ratio']:.3f} | <= 1.10 |")
    print(f"| peak step memory | {mib(memory['plain'])} | {mib(memory['grounded'])} | {result['memory_ratio']:.3f} "
          f"| <= 1.15 |")
    print(f"| data loader ({args.workers} workers) | | {rate:.1f} samples/s | | |")
    print(f"\nmemory: {result['memory_method']}; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
