"""What the metrics beside MultiGen cost per image, generation excluded, as a ratio against generating
that image: measured in one run, on one machine.

Every network has its real architecture at its real input size, with random weights built offline
(speed does not depend on weights):
  generation   SD1.4 (UNet, VAE, CLIP ViT-L/14 text encoder; tasks/multigen/toy.py), PNDM, guidance 7.5,
               --gen-batch images per call (1), at --resolution px for --steps steps (the paper: 512 px,
               50 steps; a 2-core CPU cannot). The pipeline's per-step clock gives the UNet call's time
               (median of the calls after the first); "at 50 steps" is this run's fixed part (text
               encoding, first-call overhead, VAE decoding) plus the 51 UNet calls of PNDM's 50 steps at
               that measured time, at the same resolution.
  MultiGen     OWLv2-L/14 (tasks/multigen/detection.Detector), five queries, at --owlv2-size px (paper 960).
  VISOR        OWL-ViT B/32 (google/owlvit-base-patch32's config, 768 px), two queries (visor.detect_boxes).
  OptiGen      detection as MultiGen's; plus GPT-2 small's config (12 layers, 768 wide, 50,257-token head)
               scoring pairs (optigen.continuation_log_probs; a BPE tokenizer trained here stands in for
               GPT-2's) and the Sinkhorn + lowest-pair selection: one-offs per run, timed on
               --optigen-pairs of COCO-80's 6,320 pairs and scaled to all of them.
  FID          torch-fidelity's InceptionV3 (toy.save_random_inception) on PNG-encoded images in a batch,
               resized to the generation resolution; the Frechet distance (2048-d) once per model and set.
  CLIP score   open_clip ViT-L-14 (random), image and caption.
  grounding    the fast variant (grounding_miou.fast_token_maps: VAE encoding, 3 UNet passes as one
               batch, DAAM's aggregation, binarisation and IoU of two nouns) on a real-image-sized input
               at --resolution.
  latency      is generation itself (10 timed images + 2 warm-ups + the batched path per model).

The ratio is metric seconds per image / generation seconds per image, both at this run's settings.
The protocol table multiplies each by the paper's image counts and says whether all evaluation stays
within 25 % of the generation. GPU figures are not measured by a CPU run; give --device cuda on a GPU.

    python bench/bench_metrics.py                                    # CPU default (4 CPU-minutes on 2 cores)
    python bench/bench_metrics.py --resolution 512 --owlv2-size 960  # the paper's input sizes (2-core CPU: 11 min)
    python bench/bench_metrics.py --device cuda --precision bf16 --resolution 512 --steps 50 --owlv2-size 960 \
        --gen-batch 16 --batch 32
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.25
PAPER_STEPS = 50
CATEGORIES5 = ["book", "cup", "kite", "mouse", "surfboard"]
CAPTION = "a dog sitting on a bench next to a bicycle"
NOUNS = ("dog", "bicycle")

# The paper's protocol (per model): how many images each part generates and scores.
MULTIGEN_IMAGES = 2 * 1000 * 10          # COCO and ADE20K sets, 1,000 prompts, 10 images each
VISOR_IMAGES = 25_280 * 4                # every spatial prompt, 4 images (VISOR_1..4)
FID_C, FID_F = 10_000, 1_000             # caption generations = real images of each set
LATENCY_IMAGES = 2 + 10 + 8 + 10         # LatencyConfig defaults: warm-ups, timed, batched warm-up, batched
GROUNDING_IMAGES = 5_000                 # COCO val2017 images (our grounded shards of them)
OPTIGEN_PROMPTS, OPTIGEN_IMAGES_PER_PROMPT, COCO_PAIRS = 100, 10, 80 * 79


class Clock:
    def __init__(self, device: str):
        self.device = device

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def time(self, work: Callable[[], object], warmup: int = 0, repeats: int = 1) -> float:
        """Median seconds of ``repeats`` calls after ``warmup`` untimed ones."""
        for _ in range(warmup):
            work()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            work()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def generation(pipe, clock: Clock, resolution: int, steps: int, batch: int) -> tuple[dict, np.ndarray]:
    """One pipeline call of ``batch`` images: seconds per image, the UNet call's median time, and the
    50-step figure per image from them."""
    from tokencompose.tasks.multigen.generation import initial_latents

    stamps: list[float] = []

    def on_step(_pipe, _index, _timestep, kwargs):
        clock.sync()
        stamps.append(time.perf_counter())
        return kwargs

    shape = (4, resolution // 8, resolution // 8)
    latents = torch.stack([initial_latents(0, i, 0, shape) for i in range(batch)]).to(pipe.unet.device, pipe.unet.dtype)
    clock.sync()
    start = time.perf_counter()
    with torch.inference_mode():
        image = pipe(prompt=[CAPTION] * batch, latents=latents, num_inference_steps=steps, guidance_scale=7.5,
                     height=resolution, width=resolution, output_type="np", callback_on_step_end=on_step).images[0]
    clock.sync()
    total = time.perf_counter() - start
    step = statistics.median(np.diff(stamps))               # the steps after the first
    calls = len(stamps)                                     # PNDM (skip_prk_steps) makes steps + 1 UNet calls
    fixed = total - calls * step
    pipe.scheduler.set_timesteps(PAPER_STEPS)
    calls_50 = len(pipe.scheduler.timesteps)
    return ({"resolution": resolution, "steps": steps, "batch": batch, "unet_calls": calls, "seconds": total / batch,
             "step_seconds": step, "fixed_seconds": fixed, "unet_calls_at_50_steps": calls_50,
             "seconds_at_50_steps": (fixed + calls_50 * step) / batch},
            (image * 255).round().astype(np.uint8))


def owl_tokenizer(scratch: Path):
    from tokencompose.tasks.training.toy import clip_tokenizer

    tokenizer = clip_tokenizer(scratch / "clip-tokenizer")
    tokenizer.model_max_length = 16
    return tokenizer


def owlv2_large(size: int, tokenizer):
    """OWLv2-L/14's architecture (tasks/multigen/toy.py's "large") at ``size`` px input."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from tokencompose.tasks.multigen.toy import OWLV2_PRESETS

    spec = OWLV2_PRESETS["large"]
    config = Owlv2Config(text_config=dict(vocab_size=49408, max_position_embeddings=16, bos_token_id=49406,
                                          eos_token_id=49407, pad_token_id=0, **spec["text"]),
                         vision_config={**spec["vision"], "image_size": size}, projection_dim=spec["projection_dim"])
    torch.manual_seed(0)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": size, "width": size}),
                               tokenizer=tokenizer)
    return Owlv2ForObjectDetection(config).eval(), processor


def owlvit_base32(tokenizer):
    """google/owlvit-base-patch32's architecture (transformers' OwlViTConfig defaults: ViT-B/32 at 768 px,
    a 512-wide 12-layer text transformer, 512-d projections)."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    config = OwlViTConfig(text_config=dict(vocab_size=49408, max_position_embeddings=16, bos_token_id=49406,
                                           eos_token_id=49407, pad_token_id=0))
    torch.manual_seed(0)
    size = config.vision_config.image_size
    processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(size={"height": size, "width": size},
                                                                     crop_size={"height": size, "width": size}),
                                tokenizer=tokenizer)
    return OwlViTForObjectDetection(config).eval(), processor


def gpt2_small(scratch: Path):
    """GPT-2 small's config with random weights; the tokenizer is a BPE trained on COCO-80's OptiGen texts."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tokencompose.tasks.evaluation.optigen import coco80
    from tokencompose.tasks.evaluation.toy import save_random_gpt2

    folder = save_random_gpt2(scratch / "gpt2-tokenizer", coco80(), vocab_size=1000)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    return model.eval(), tokenizer


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(args, clock: Clock, scratch: Path) -> dict:
    from PIL import Image

    from tokencompose.tasks.evaluation import clip_score, fid, grounding_miou, optigen, visor
    from tokencompose.tasks.multigen.detection import Detector
    from tokencompose.tasks.multigen.toy import sd14_pipeline

    light = dict(warmup=1, repeats=args.repeats)
    heavy = dict(warmup=args.heavy_warmup, repeats=1)
    out: dict = {}
    from tokencompose.tasks.multigen.generation import resolve_dtype

    dtype = resolve_dtype(args.precision, args.device)
    pipe = sd14_pipeline(dtype=None if dtype == torch.float32 else dtype).to(args.device)  # built in fp32
    gen, array = generation(pipe, clock, args.resolution, args.steps, args.gen_batch)
    out["generation"] = gen
    image = Image.fromarray(array)
    log(f"generation: {gen['seconds']:.1f} s for {gen['steps']} steps; {gen['seconds_at_50_steps']:.1f} s at 50")

    # grounding, fast variant: the real image's pixels in [-1, 1], its caption, two nouns' masks
    tokenizer = pipe.tokenizer
    ids = tokenizer(CAPTION, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
    words = tokenizer(CAPTION).input_ids
    columns = [words.index(tokenizer.convert_tokens_to_ids(f"{n}</w>")) for n in NOUNS]
    pixels = torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1
    mask = torch.zeros(args.resolution, args.resolution, dtype=torch.bool)
    mask[: args.resolution // 2] = True

    def ground() -> None:
        maps = grounding_miou.fast_token_maps(pipe, pixels, ids, columns, key="bench", seed=0,
                                              timesteps=grounding_miou.DEFAULT_TIMESTEPS)
        for k in range(len(columns)):
            grounding_miou.iou(grounding_miou.binarise(grounding_miou.word_map(maps, [k]), args.resolution), mask)

    out["grounding_fast"] = {"seconds_per_image": clock.time(ground, **heavy), "unet_passes": 3}
    log(f"grounding: {out['grounding_fast']['seconds_per_image']:.1f} s")
    pipe = None

    tokenizer = owl_tokenizer(scratch)
    model, processor = owlv2_large(args.owlv2_size, tokenizer)
    detector = Detector.from_parts(model, processor, args.device, args.precision)
    out["multigen_detection"] = {"input": args.owlv2_size, "seconds_per_image":
                                 clock.time(lambda: detector.score([image], [CATEGORIES5]), **heavy)}
    log(f"OWLv2-L: {out['multigen_detection']['seconds_per_image']:.1f} s")
    detector = model = None

    model, processor = owlvit_base32(tokenizer)
    model.to(args.device)
    out["visor_detection"] = {"input": processor.image_processor.size["height"], "seconds_per_image": clock.time(
        lambda: visor.detect_boxes(model, processor, [image], [["dog", "bicycle"]]), **light)}
    model = None

    weights = toy_inception(scratch)
    extractor = fid.InceptionFeatures(weights, device=args.device, batch_size=args.batch)
    dataset = fid.bytes_dataset([png(array)] * args.batch, args.resolution)
    out["fid_features"] = {"batch": args.batch, "seconds_per_image":
                           clock.time(lambda: extractor.features(dataset), **light) / args.batch}
    features = np.random.default_rng(0).standard_normal((4096, 2048))
    stats = fid.Statistics(features.mean(0), np.cov(features, rowvar=False), len(features))
    shifted = fid.Statistics(stats.mu + 0.1, stats.sigma * 1.1, stats.count)
    out["fid_distance"] = {"seconds_per_model_and_set": clock.time(lambda: fid.frechet_distance(stats, shifted))}
    extractor = None

    scorer = clip_score.ClipScorer(device=args.device, batch_size=args.batch)
    out["clip_score"] = {"model": scorer.model_name, "batch": args.batch, "seconds_per_image": clock.time(
        lambda: scorer.score([image] * args.batch, [CAPTION] * args.batch), **light) / args.batch}
    scorer = None

    model, tokenizer = gpt2_small(scratch)
    model.to(args.device)
    pairs = optigen.pair_sequences(tokenizer, optigen.coco80())[: args.optigen_pairs]
    pad = tokenizer.eos_token_id

    def score_pairs() -> None:
        optigen.continuation_log_probs(model, [p[2] for p in pairs], [p[3] for p in pairs], 64, pad)

    per_pair = clock.time(score_pairs, **light) / len(pairs)
    log_probs = np.random.default_rng(0).normal(-12, 3, (80, 80))
    np.fill_diagonal(log_probs, -np.inf)
    select = clock.time(lambda: optigen.select_prompts(log_probs, optigen.coco80(), OPTIGEN_PROMPTS))
    out["optigen_selection"] = {"pairs_timed": len(pairs), "seconds_per_pair": per_pair,
                                "mean_tokens_per_pair": float(np.mean([len(p[2]) for p in pairs])),
                                "sinkhorn_and_selection_seconds": select,
                                "seconds_per_run": per_pair * COCO_PAIRS + select}
    return out


def toy_inception(scratch: Path) -> Path:
    from tokencompose.tasks.evaluation.toy import save_random_inception

    return save_random_inception(scratch / "inception.pth")


def protocol(m: dict) -> dict:
    """The paper's protocol per model: evaluation seconds of each part against the generation seconds of
    the images it makes, and the total."""
    gen = m["generation"]["seconds_at_50_steps"]
    det = m["multigen_detection"]["seconds_per_image"]
    inception, clip = m["fid_features"]["seconds_per_image"], m["clip_score"]["seconds_per_image"]
    optigen_images = OPTIGEN_PROMPTS * OPTIGEN_IMAGES_PER_PROMPT
    parts = {
        "MultiGen COCO + ADE20K (OWLv2-L)": (MULTIGEN_IMAGES, MULTIGEN_IMAGES * det),
        "VISOR (OWL-ViT B/32)": (VISOR_IMAGES, VISOR_IMAGES * m["visor_detection"]["seconds_per_image"]),
        "FID (C) + (F) generated features, 2 distances": (
            FID_C + FID_F, (FID_C + FID_F) * inception + 2 * m["fid_distance"]["seconds_per_model_and_set"]),
        "FID real statistics (once per set, then cached)": (0, (FID_C + FID_F) * inception),
        "CLIP score (caption generations)": (0, (FID_C + FID_F) * clip),
        "latency (generation itself)": (LATENCY_IMAGES, LATENCY_IMAGES * gen),
        "grounding fast (5,000 val2017 images)": (0, GROUNDING_IMAGES * m["grounding_fast"]["seconds_per_image"]),
        "OptiGen (GPT-2 once + OWLv2-L)": (optigen_images, m["optigen_selection"]["seconds_per_run"]
                                           + optigen_images * det),
    }
    rows = {name: {"generated_images": n, "evaluation_seconds": s} for name, (n, s) in parts.items()}
    generated = sum(r["generated_images"] for r in rows.values())
    evaluation = sum(r["evaluation_seconds"] for r in rows.values())
    cached = evaluation - rows["FID real statistics (once per set, then cached)"]["evaluation_seconds"]
    return {"generation_seconds_per_image": gen, "parts": rows, "generated_images": generated,
            "generation_seconds": generated * gen, "evaluation_seconds": evaluation,
            "overhead": evaluation / (generated * gen), "overhead_with_cached_real_statistics": cached / (generated * gen),
            "target": TARGET, "holds": evaluation / (generated * gen) <= TARGET}


def per_image_table(m: dict) -> list[tuple[str, float, str]]:
    opt = m["optigen_selection"]
    amortised = opt["seconds_per_run"] / (OPTIGEN_PROMPTS * OPTIGEN_IMAGES_PER_PROMPT)
    return [
        ("MultiGen detection, OWLv2-L", m["multigen_detection"]["seconds_per_image"], "per generated image"),
        ("VISOR detection, OWL-ViT B/32", m["visor_detection"]["seconds_per_image"], "per generated image"),
        ("FID Inception features", m["fid_features"]["seconds_per_image"], "per image (generated or real)"),
        ("CLIP score ViT-L/14", m["clip_score"]["seconds_per_image"], "per generated image"),
        ("grounding fast variant", m["grounding_fast"]["seconds_per_image"], "per real val image"),
        ("OptiGen GPT-2 pair scoring", amortised, f"{opt['seconds_per_run']:.0f} s per run, amortised over "
         f"{OPTIGEN_PROMPTS} prompts x {OPTIGEN_IMAGES_PER_PROMPT} images"),
        ("latency", float("nan"), "is generation itself: ratio 1 per timed image"),
    ]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_report(results: dict) -> None:
    measured, paper = results["measured"], results["paper_protocol"]
    gen = measured["generation"]
    print(f"\n{results['device_name']}, {results['torch_threads']} threads, {results['precision']}, random weights; "
          f"reduced: {', '.join(results['reduced_settings']) or 'none'}")
    print(f"generation: {gen['seconds']:.1f} s per image for {gen['steps']} steps at {gen['resolution']} px "
          f"in batches of {gen.get('batch', 1)} ({gen['step_seconds']:.2f} s per UNet call); "
          f"{gen['seconds_at_50_steps']:.1f} s per image at 50 steps\n")
    print("| metric | s/image | ratio to generation (50 steps) | note |\n|---|---:|---:|---|")
    for name, seconds, note in per_image_table(measured):
        ratio = seconds / gen["seconds_at_50_steps"]
        print(f"| {name} | {seconds:.3f} | {ratio:.2%} | {note} |" if seconds == seconds else f"| {name} | - | - | {note} |")
    print("\nThe paper's protocol per model:\n\n| part | images generated | evaluation s | against its own images' "
          "generation | share of all generation |\n|---|---:|---:|---:|---:|")
    for name, row in paper["parts"].items():
        own = row["evaluation_seconds"] / (row["generated_images"] * paper["generation_seconds_per_image"]) \
            if row["generated_images"] else None
        print(f"| {name} | {row['generated_images']:,} | {row['evaluation_seconds']:,.0f} | "
              f"{'-' if own is None else f'{own:.2%}'} | {row['evaluation_seconds'] / paper['generation_seconds']:.2%} |")
    print(f"\nevaluation / generation = {paper['overhead']:.1%} (real statistics cached: "
          f"{paper['overhead_with_cached_real_statistics']:.1%}); target <= {TARGET:.0%}: "
          f"{'holds' if paper['holds'] else 'does not hold'} on this machine at these settings")
    if results["device"] == "cpu":
        print("GPU figures: not measured (no GPU in this run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="generation's and OWLv2-L's precision (fp32, bf16, fp16, "
                        "auto); the other metrics run fp32 as the evaluation does")
    parser.add_argument("--resolution", type=int, default=128, help="generation (and FID, grounding) px; paper 512")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps run (>= 2); the 50-step figure is "
                        "derived from their measured step time")
    parser.add_argument("--gen-batch", type=int, default=1, help="images per pipeline call (the evaluation's "
                        "generation.batch_size, 16, on a GPU)")
    parser.add_argument("--owlv2-size", type=int, default=480, help="OWLv2-L input px (paper and MultiGen: 960)")
    parser.add_argument("--batch", type=int, default=4, help="images per Inception and CLIP call")
    parser.add_argument("--optigen-pairs", type=int, default=64, help="pairs timed of COCO-80's 6,320")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls of the light parts (median)")
    parser.add_argument("--heavy-warmup", type=int, default=0, help="untimed calls before OWLv2-L and grounding "
                        "(the light parts always get one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    parser.add_argument("--report", type=Path, default=None, help="measure nothing: recompute the protocol totals of "
                        "this results file from its measured figures, print its tables and rewrite it")
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())
        results["paper_protocol"] = protocol(results["measured"])
        print_report(results)
        args.report.write_text(json.dumps(results, indent=2, default=float) + "\n")
        return 0
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the step time is measured between steps)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from tokencompose.tasks.evaluation.latency import device_name

    clock = Clock(args.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        measured = measure(args, clock, Path(scratch))
    paper = protocol(measured)
    reduced = [f"generation at {args.resolution} px" if args.resolution != 512 else "",
               f"{args.steps} steps run, 50 derived from their step time" if args.steps != PAPER_STEPS else "",
               f"OWLv2-L at {args.owlv2_size} px" if args.owlv2_size != 960 else ""]
    results = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "weights": "random (real architectures)",
               "precision": args.precision,
               "reduced_settings": [r for r in reduced if r], "gpu": "not measured" if args.device == "cpu" else None,
               "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
               "measured": measured, "paper_protocol": paper,
               "command": "python bench/bench_metrics.py " + " ".join(sys.argv[1:])}
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
