"""The MultiGen report: scores per model side by side, differences to the first model with paired
bootstrap intervals, the weakest categories and pairs, a grid of sample images per model and the
cross-attention grids. Written as report.json and report.md (images beside it)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

from tokencompose.schemas.multigen import Comparison, ModelReport, MultiGenReport
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.attention_maps import GRID_FILE as ATTENTION_GRID
from tokencompose.tasks.multigen.metrics import LEVELS, paired_bootstrap, score_rows
from tokencompose.tasks.multigen.plan import ModelRun, Plan, attention_dir, model_rows

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
GRID_FILE = "grid.png"


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def sample_grid(plan: Plan, run: ModelRun, path: Path, prompts: int, images: int) -> Path | None:
    """The first images of the first prompts, one row per prompt, from the model's shards."""
    chosen = plan.prompts[:prompts]
    if not chosen:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    wanted = {p.id for p in chosen}
    count = min(images, plan.config.generation.images_per_prompt)
    found: dict[tuple[int, int], tuple[bytes, bool]] = {}
    for shard in plan.shards:
        if not wanted & {p.id for p in shard.prompts}:
            continue
        for meta, png in gen.read_shard(run.images_dir / f"{shard.name}.tar"):
            if meta["prompt_id"] in wanted and meta["image_index"] < count:
                found[(meta["prompt_id"], meta["image_index"])] = (png, meta["nan"])
    fig, axes = plt.subplots(len(chosen), count, figsize=(2.2 * count, 2.5 * len(chosen)), squeeze=False)
    for row, prompt in enumerate(chosen):
        for col in range(count):
            ax = axes[row, col]
            png, nan = found[(prompt.id, col)]
            ax.imshow(Image.open(io.BytesIO(png)).convert("RGB"))
            ax.axis("off")
            if nan:
                ax.set_title("NaN", fontsize=8, color="red")
        axes[row, 0].set_title(", ".join(prompt.categories), fontsize=7, loc="left")
    fig.suptitle(run.label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def build_report(plan: Plan) -> MultiGenReport:
    config = plan.config
    out = Path(config.out_dir)
    threshold = config.detection.threshold
    rows = {run.label: model_rows(plan, run) for run in plan.runs}
    models = []
    for run in plan.runs:
        scores = score_rows(rows[run.label], threshold)
        grid = sample_grid(plan, run, run.folder / GRID_FILE, config.report.grid_prompts, config.report.grid_images)
        attention = [attention_dir(run, p) / ATTENTION_GRID for p in plan.prompts[:config.report.attention_prompts]]
        models.append(ModelReport(label=run.label, path=str(run.path), model_id=run.model_id, **scores.model_dump(),
                                  grid=grid.relative_to(out).as_posix() if grid else None,
                                  attention=[a.relative_to(out).as_posix() for a in attention if a.exists()]))
    comparisons = []
    baseline = plan.runs[0].label
    for run in plan.runs[1:]:
        mg = {}
        for k in LEVELS:
            mg[f"MG{k}"] = paired_bootstrap(rows[baseline], rows[run.label], threshold, k,
                                            config.report.bootstrap_samples, config.report.bootstrap_seed,
                                            config.report.confidence)
        comparisons.append(Comparison(baseline=baseline, model=run.label, mg=mg))
    benchmark = {"prompts": len(plan.prompts), "images_per_prompt": config.generation.images_per_prompt,
                 "source": str(config.benchmark.file or config.benchmark.categories_file or config.benchmark.name),
                 "prompts_fingerprint": plan.all_prompts_fingerprint, "seed": config.generation.seed,
                 "steps": config.generation.steps, "guidance_scale": config.generation.guidance_scale,
                 "resolution": config.generation.resolution, "scheduler": config.generation.scheduler,
                 "precision": config.generation.precision, "detector": str(plan.detector), "threshold": threshold,
                 "query_template": config.detection.query_template,
                 "bootstrap": {"samples": config.report.bootstrap_samples, "seed": config.report.bootstrap_seed,
                               "confidence": config.report.confidence}}
    redone = [f"{run.label}/{line}" for run in plan.runs for line in integrity.redone_lines(run.folder)]
    markdown = render_markdown(benchmark, models, comparisons, config.report.hardest, redone)
    md_path, json_path = out / REPORT_MD, out / REPORT_JSON
    report = MultiGenReport(benchmark=benchmark, models=models, comparisons=comparisons, redone=redone,
                            markdown_path=md_path,
                            json_path=json_path, markdown=markdown)
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(report.model_dump(mode="json", exclude={"markdown"}), indent=1, sort_keys=True))
    return report


def render_markdown(benchmark: dict, models: list[ModelReport], comparisons: list[Comparison], hardest: int,
                    redone: Sequence[str] = ()) -> str:
    levels = [f"MG{k}" for k in LEVELS]
    lines = [f"# MultiGen: {benchmark['source']}", "",
             f"{benchmark['prompts']} prompts x {benchmark['images_per_prompt']} images, seed {benchmark['seed']}, "
             f"{benchmark['steps']} steps ({benchmark['scheduler']}), guidance {benchmark['guidance_scale']}, "
             f"{benchmark['resolution']} px; OWLv2 queries \"{benchmark['query_template']}\", score > "
             f"{benchmark['threshold']}. MG_k: % of images with at least k of the 5 categories detected; mean ± "
             f"population std over the {benchmark['images_per_prompt']} image rounds.", "",
             "| model | images | NaN images | " + " | ".join(levels) + " |",
             "|---|---:|---:|" + "---:|" * len(levels)]
    for m in models:
        cells = [f"{_fmt(m.mg[k]['mean'])} ± {_fmt(m.mg[k]['std'])}" for k in levels]
        lines.append(f"| {m.label} | {m.images} | {m.nan} | " + " | ".join(cells) + " |")
    if any(m.nan for m in models):
        lines += ["", "Images whose generation produced NaNs are not scored (the percentages are over the others)."]
    if comparisons:
        b = benchmark["bootstrap"]
        lines += ["", f"## Difference to {comparisons[0].baseline}", "",
                  f"Pooled MG_k difference (percentage points) with a {int(b['confidence'] * 100)}% paired bootstrap "
                  f"interval over prompts ({b['samples']} resamples, seed {b['seed']}).", "",
                  "| model | " + " | ".join(levels) + " |", "|---|" + "---:|" * len(levels)]
        for comparison in comparisons:
            mg = comparison.mg
            cells = [f"{_fmt(mg[k]['diff'], sign=True)} [{_fmt(mg[k]['low'], sign=True)}, "
                     f"{_fmt(mg[k]['high'], sign=True)}]" for k in levels]
            lines.append(f"| {comparison.model} | " + " | ".join(cells) + " |")
    labels = [m.label for m in models]
    base = models[0]
    weakest = sorted(base.categories, key=lambda c: (base.categories[c]["rate"], c))[:hardest]
    lines += ["", f"## Categories detected least often ({base.label}'s {len(weakest)} weakest; detection rate %)", "",
              "| category | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for c in weakest:
        lines.append(f"| {c} | " + " | ".join(_fmt(100 * m.categories[c]["rate"], 1) if c in m.categories else "n/a"
                                              for m in models) + " |")
    pairs = sorted(base.pairs, key=lambda p: (base.pairs[p]["rate"], -base.pairs[p]["images"], p))[:hardest]
    lines += ["", f"## Pairs hardest to get both ({base.label}'s {len(pairs)} lowest; % of images with both)", "",
              "| pair | images | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for p in pairs:
        lines.append(f"| {p} | {base.pairs[p]['images']} | " + " | ".join(
            _fmt(100 * m.pairs[p]["rate"], 1) if p in m.pairs else "n/a" for m in models) + " |")
    lines += ["", "## Sample images", ""]
    for m in models:
        if m.grid:
            lines += [f"### {m.label}", "", f"![{m.label} samples]({m.grid})", ""]
    if any(m.attention for m in models):
        lines += ["## Cross-attention maps (middle block and decoder, averaged over steps)", ""]
        for m in models:
            for path in m.attention:
                lines += [f"### {m.label}", "", f"![{m.label} attention]({path})", ""]
    if redone:
        lines += ["## Files redone", "", "Found broken (truncated, overwritten or without their record) and made again:",
                  ""] + [f"- {line}" for line in redone] + [""]
    lines += ["Per-category and per-pair rates of every model are in report.json."]
    return "\n".join(lines) + "\n"
