"""Training throughput: a step with TokenCompose's grounding losses vs a plain L_LDM step.

Same random-weight model, same batches, same precision, in one run:
  * time: the two variants' steps interleaved on identical batches, median of --steps each, and the
    samples/s that gives;
  * model FLOP utilisation: the UNet forward's FLOPs counted once (torch.utils.flop_counter at the
    benchmark's batch), a training step taken as 3 forwards (forward + backward at twice the forward),
    achieved FLOP/s = 3 x forward FLOPs / step time, MFU = that / --peak-tflops (default 989 on an
    H100, bf16 dense; elsewhere no default: the achieved GFLOP/s is reported and MFU needs the figure);
  * activation memory (forward + backward, before the optimizer step; weights, gradients and
    optimizer state excluded), grounded vs plain:
      - everywhere: the bytes autograd keeps for backward, counted with saved_tensors_hooks during
        one forward (each storage once, parameters excluded) -- deterministic and device-independent;
        under gradient checkpointing only what the checkpoint keeps outside its blocks is seen;
      - on CUDA also: torch.cuda.max_memory_allocated from before the forward to after the backward,
        less the memory allocated before the forward (gradients already allocated);
      - on CPU optionally (--rss-runs N): the earlier peak-RSS figure from N subprocesses per variant
        (noisy: the allocator, not the tensors);
  * the data loader's samples/s (decode, crop, RLE masks, tokenization) with --workers workers,
    against the training samples/s.

    python bench/bench_train.py --preset small --threads 1        # CPU, "small" SD1.x-layout UNet at 256 px
    python bench/bench_train.py --full-sd14 --precision bf16 --device cuda --batch-size 16 --no-checkpointing

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
if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1:][:1] == ["cpu"]:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

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
                       aggregation=args.aggregation, channels_last=args.channels_last,
                       compile_unet=args.compile, **weights)


# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the device name
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def forward_flops(trainer, batch) -> int:
    """FLOPs of one UNet forward on ``batch`` (the plain model: the captured columns add nothing countable)."""
    from torch.utils.flop_counter import FlopCounterMode

    m, device = trainer.models, trainer.accelerator.device
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    latent = trainer.config.resolution // m.vae_scale_factor
    noisy = torch.randn(batch.size, unet.config.in_channels, latent, latent, device=device)
    hidden = torch.randn(batch.size, batch.input_ids.shape[1], unet.config.cross_attention_dim, device=device)
    timesteps = torch.zeros(batch.size, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), trainer.accelerator.autocast(), counter:
        unet(noisy, timesteps, hidden)
    return counter.get_total_flops()


def saved_tensor_bytes(trainer, batch) -> int:
    """Bytes autograd keeps for backward after one forward of the training objective."""
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = trainer.compute_loss(batch)
    del loss
    return sum(seen.values())


def gpu_activation_memory(trainer, batch) -> int:
    """max_memory_allocated over forward + backward above the memory before the forward."""
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    loss, _ = trainer.compute_loss(batch)
    trainer.accelerator.backward(loss)   # allocates the gradients: not activations
    del loss
    unet.zero_grad(set_to_none=False)
    sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss, _ = trainer.compute_loss(batch)
    trainer.accelerator.backward(loss)
    del loss
    sync()
    peak = torch.cuda.max_memory_allocated() - base
    unet.zero_grad(set_to_none=True)
    return peak


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
    for variant in VARIANTS * args.rss_runs:  # RSS is noisy: medians over steps and processes
        command = [sys.executable, __file__, "--memory-child", variant, "--model", str(model), "--shards", str(shards),
                   "--work", str(work), "--preset", args.preset, "--precision", args.precision,
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--aggregation", args.aggregation]
        if args.no_checkpointing:
            command.append("--no-checkpointing")
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        peaks[variant] += json.loads(result.stdout.strip().splitlines()[-1])["peak_kib"]
    return {v: int(statistics.median(p)) * 1024 for v, p in peaks.items()}


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
    parser.add_argument("--rss-runs", type=int, default=0, help="CPU: subprocesses per variant for a peak-RSS figure "
                        "(0: none)")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--channels-last", action="store_true", help="CUDA: the UNet in channels-last format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (warm-up steps compile)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="cpu hides CUDA (CUDA_VISIBLE_DEVICES=''); cuda requires it")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak FLOP/s for MFU (default: 989 on an H100, bf16 dense; none on CPU)")
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
    if args.device == "cuda" and not gpu:
        parser.error("--device cuda: no CUDA device")
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
        saved = {v: saved_tensor_bytes(trainers[v], batches[0]) for v in VARIANTS}
        gpu_peak = {v: gpu_activation_memory(trainers[v], batches[0]) for v in VARIANTS} if gpu else None
        rss = cpu_memory(args, model, shards, work) if (not gpu and args.rss_runs) else None
        flops = forward_flops(trainers["plain"], batches[0])
        rate = loader_rate(trainers["grounded"], args.workers, args.loader_batches)

    median = {v: statistics.median(t) for v, t in times.items()}
    samples_per_s = {v: args.batch_size / median[v] for v in VARIANTS}
    device = torch.cuda.get_device_name() if gpu else f"cpu ({platform.processor() or platform.machine()}, " \
                                                      f"{torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((p for name, p in PEAK_TFLOPS.items() if gpu and name in device), None)
    achieved = {v: 3 * flops / median[v] for v in VARIANTS}
    unet = trainers["grounded"].accelerator.unwrap_model(trainers["grounded"].unet)
    result = {
        "device": device,
        "preset": args.preset, "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "resolution": PRESETS[args.preset]["resolution"], "batch_size": args.batch_size, "precision": args.precision,
        "gradient_checkpointing": not args.no_checkpointing, "aggregation": args.aggregation,
        "channels_last": args.channels_last, "compile_unet": args.compile,
        "fused_optimizer": trainers["grounded"].fused_optimizer,
        "trained_maps": len(trainers["grounded"].resolutions),
        "step_s": median, "step_s_all": times, "time_ratio": median["grounded"] / median["plain"],
        "samples_per_s": samples_per_s,
        "unet_forward_flops": flops, "train_step_flops": 3 * flops,
        "achieved_tflops": {v: a / 1e12 for v, a in achieved.items()},
        "peak_tflops": peak, "mfu": {v: a / (peak * 1e12) for v, a in achieved.items()} if peak else None,
        "activation_memory_method": "bytes autograd saves for backward during one forward (saved_tensors_hooks, "
                                    "each storage once, parameters excluded)",
        "activation_bytes": saved, "activation_ratio": saved["grounded"] / saved["plain"],
        "gpu_activation_peak_bytes": gpu_peak,
        "gpu_activation_peak_ratio": gpu_peak["grounded"] / gpu_peak["plain"] if gpu_peak else None,
        "rss_peak_step_bytes": rss, "rss_ratio": rss["grounded"] / rss["plain"] if rss else None,
        "loader_workers": args.workers, "loader_samples_per_s": rate,
        "targets": {"time_ratio": 1.05, "activation_ratio": 1.10, "samples_per_s_sd14_512_bf16_h100": 80},
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    print(f"train step, {result['device']}, preset {args.preset} ({result['unet_parameters'] / 1e6:.1f} M UNet "
          f"parameters), {result['resolution']} px, batch {args.batch_size}, precision {args.precision}, "
          f"checkpointing {not args.no_checkpointing}\n")
    print("| measure | plain L_LDM | + token & pixel losses | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| step time (median of {args.steps}) | {median['plain'] * 1e3:.0f} ms | {median['grounded'] * 1e3:.0f} ms "
          f"| {result['time_ratio']:.3f} | <= 1.05 |")
    print(f"| samples/s | {samples_per_s['plain']:.2f} | {samples_per_s['grounded']:.2f} | | >= 80 (H100, SD1.4) |")
    print(f"| achieved TFLOP/s (3 x {flops / 1e9:.2f} GFLOP forward) | {achieved['plain'] / 1e12:.4f} | "
          f"{achieved['grounded'] / 1e12:.4f} | | |")
    if peak:
        print(f"| MFU (peak {peak:.0f} TFLOP/s) | {result['mfu']['plain']:.1%} | {result['mfu']['grounded']:.1%} | | |")
    else:
        print("| MFU | needs --peak-tflops | | | |")
    print(f"| activation memory (saved for backward) | {mib(saved['plain'])} | {mib(saved['grounded'])} "
          f"| {result['activation_ratio']:.3f} | <= 1.10 |")
    if gpu_peak:
        print(f"| activation peak (CUDA allocator) | {mib(gpu_peak['plain'])} | {mib(gpu_peak['grounded'])} "
              f"| {result['gpu_activation_peak_ratio']:.3f} | <= 1.10 |")
    if rss:
        print(f"| peak step RSS | {mib(rss['plain'])} | {mib(rss['grounded'])} | {result['rss_ratio']:.3f} | |")
    print(f"| data loader ({args.workers} workers) | | {rate:.1f} samples/s | | > samples/s |")
    print(f"\nJSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
