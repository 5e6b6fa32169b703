"""The MultiGen report: scores per model side by side, differences to the first model with paired
bootstrap intervals, the weakest categories and pairs, a grid of sample images per model and the
cross-attention grids. Written as report.json and report.md (images beside it)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence

from tokencompose.schemas.multigen import Comparison, ModelMetrics, ModelReport, MultiGenReport
from tokencompose.schemas.evaluation import ReportConfig
from tokencompose.tasks.evaluation.suite import read_metrics
from tokencompose.tasks.multigen import generation as gen
from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.attention_maps import GRID_FILE as ATTENTION_GRID
from tokencompose.tasks.multigen.metrics import (LEVELS, paired_bootstrap, paired_mean_difference,
                                                 paired_rate_difference, score_rows)
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
                                  attention=[a.relative_to(out).as_posix() for a in attention if a.exists()],
                                  metrics=read_metrics(run) if config.metrics.enabled() else ModelMetrics()))
    comparisons: list[Comparison] = []
    baseline = plan.runs[0].label
    for run in plan.runs[1:]:
        mg = {}
        for k in LEVELS:
            mg[f"MG{k}"] = paired_bootstrap(rows[baseline], rows[run.label], threshold, k,
                                            config.report.bootstrap_samples, config.report.bootstrap_seed,
                                            config.report.confidence)
        comparisons.append(Comparison(baseline=baseline, model=run.label, mg=mg,
                                      metrics=compare_metrics(models[0].metrics, models[len(comparisons) + 1].metrics,
                                                              config.report)))
    benchmark = {"prompts": len(plan.prompts), "images_per_prompt": config.generation.images_per_prompt,
                 "source": str(config.benchmark.file or config.benchmark.categories_file or config.benchmark.name),
                 "prompts_fingerprint": plan.all_prompts_fingerprint, "seed": config.generation.seed,
                 "steps": config.generation.steps, "guidance_scale": config.generation.guidance_scale,
                 "resolution": generated_sides(plan), "scheduler": config.generation.scheduler,
                 "precision": config.generation.precision, "detector": str(plan.detector), "threshold": threshold,
                 "query_template": config.detection.query_template,
                 "bootstrap": {"samples": config.report.bootstrap_samples, "seed": config.report.bootstrap_seed,
                               "confidence": config.report.confidence}}
    redone = [f"{run.label}/{line}" for run in plan.runs for line in integrity.redone_lines(run.folder)]
    markdown = render_markdown(benchmark, models, comparisons, config.report.hardest, redone)
    if config.metrics.enabled():
        markdown += "\n" + render_table1(config.benchmark.name if not (config.benchmark.file or
                                                                       config.benchmark.categories_file) else None,
                                         models, comparisons)
    md_path, json_path = out / REPORT_MD, out / REPORT_JSON
    report = MultiGenReport(benchmark=benchmark, models=models, comparisons=comparisons, redone=redone,
                            markdown_path=md_path,
                            json_path=json_path, markdown=markdown)
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(report.model_dump(mode="json", exclude={"markdown"}), indent=1, sort_keys=True))
    return report


def generated_sides(plan: Plan) -> int | dict[str, int]:
    """The side the models generated at (each one's resolved resolution): one number when they agree."""
    sides = {run.label: run.resolution for run in plan.runs}
    return next(iter(sides.values())) if len(set(sides.values())) == 1 else sides


def sides_text(sides: int | dict[str, int]) -> str:
    if isinstance(sides, dict):
        return ", ".join(f"{label} {side} px" for label, side in sides.items())
    return f"{sides} px"


def render_markdown(benchmark: dict, models: list[ModelReport], comparisons: list[Comparison], hardest: int,
                    redone: Sequence[str] = ()) -> str:
    levels = [f"MG{k}" for k in LEVELS]
    lines = [f"# MultiGen: {benchmark['source']}", "",
             f"{benchmark['prompts']} prompts x {benchmark['images_per_prompt']} images, seed {benchmark['seed']}, "
             f"{benchmark['steps']} steps ({benchmark['scheduler']}), guidance {benchmark['guidance_scale']}, "
             f"{sides_text(benchmark['resolution'])}; OWLv2 queries \"{benchmark['query_template']}\", score > "
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


# ------------------------------------------------------------------ the metrics beside MultiGen


def paper_rows() -> list[dict[str, str]]:
    """The paper's Table 1 rows (SD1.4, TokenCompose) and Table 4's DAAM mIoU, bundled in data/."""
    import csv

    from tokencompose.data import DATA_DIR

    with open(DATA_DIR / "paper_table1.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _paired_counts(base: dict, other: dict, success: int, scored: int) -> tuple[tuple[list, list], tuple[list, list]]:
    """Per-prompt (successes, scored) of both models on their common prompts (ids are JSON keys)."""
    common = sorted(set(base) & set(other), key=int)
    return (([base[i][success] for i in common], [base[i][scored] for i in common]),
            ([other[i][success] for i in common], [other[i][scored] for i in common]))


def compare_metrics(base: ModelMetrics, other: ModelMetrics, settings: ReportConfig) -> dict[str, dict]:
    """Each metric of ``other`` minus ``base``'s on the same prompts and seeds: rates and CLIP score with a
    paired bootstrap interval over prompts; FID, latency and mIoU as plain differences."""
    samples, seed, confidence = settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence

    def rates(a: dict, b: dict, success: int, scored: int) -> dict:
        first, second = _paired_counts(a, b, success, scored)
        return paired_rate_difference(first, second, samples, seed, confidence)

    out: dict[str, dict] = {}
    if base.visor and other.visor and "per_prompt" in base.visor and "per_prompt" in other.visor:
        out["OA"] = rates(base.visor["per_prompt"], other.visor["per_prompt"], 0, 2)
        out["VISOR_uncond"] = rates(base.visor["per_prompt"], other.visor["per_prompt"], 1, 2)
    if base.optigen and other.optigen and "per_prompt" in base.optigen and "per_prompt" in other.optigen:
        out["OptiGen"] = rates(base.optigen["per_prompt"], other.optigen["per_prompt"], 0, 1)
    for name in sorted(set(base.clip_score) & set(other.clip_score)):
        a, b = base.clip_score[name]["per_prompt"], other.clip_score[name]["per_prompt"]
        common = sorted(set(a) & set(b), key=int)
        out[f"CLIP score ({name})"] = paired_mean_difference([a[i] for i in common], [b[i] for i in common], samples,
                                                            seed, confidence)
    for name in sorted(set(base.fid) & set(other.fid)):
        out[f"FID ({name})"] = {"diff": other.fid[name]["fid"] - base.fid[name]["fid"], "low": None, "high": None}
    if base.latency and other.latency:
        out["latency"] = {"diff": other.latency["seconds_per_image_mean"] - base.latency["seconds_per_image_mean"],
                          "low": None, "high": None}
    if base.grounding and other.grounding:
        out["mIoU"] = {"diff": other.grounding["miou"] - base.grounding["miou"], "low": None, "high": None}
    if base.grounding_daam and other.grounding_daam:
        out["mIoU (DAAM)"] = {"diff": other.grounding_daam["miou"] - base.grounding_daam["miou"], "low": None,
                              "high": None}
    return out


def _model_cells(m: ModelReport, benchmark: str | None) -> dict[str, str]:
    metrics = m.metrics
    cells = {"OA": _fmt(metrics.visor["OA"]) if metrics.visor else "—"}
    for source in ("COCO", "ADE20K"):
        for k in range(2, 6):
            ours = benchmark is not None and benchmark.upper() == source
            cells[f"{source} MG{k}"] = _fmt(m.mg[f"MG{k}"]["mean"]) if ours else "—"
    for name, column in (("coco", "FID (C)"), ("flickr30k", "FID (F)")):
        cells[column] = _fmt(metrics.fid[name]["fid"]) if name in metrics.fid else "—"
    others = [f"{name}: {_fmt(v['fid'])}" for name, v in metrics.fid.items() if name not in ("coco", "flickr30k")]
    cells["FID (other)"] = ", ".join(others) or "—"
    cells["latency"] = (f"{_fmt(metrics.latency['seconds_per_image_mean'])} ± "
                        f"{_fmt(metrics.latency['seconds_per_image_std'])}") if metrics.latency else "—"
    cells["mIoU"] = " / ".join([f"{_fmt(g['miou'], 4)} ({name})" for name, g in
                                (("DAAM", metrics.grounding_daam), ("fast", metrics.grounding)) if g]) or "—"
    cells["OptiGen"] = _fmt(metrics.optigen["mean"]) if metrics.optigen else "—"
    cells["CLIP score"] = ", ".join(f"{_fmt(v['clip_score'])}" + (f" ({k})" if len(metrics.clip_score) > 1 else "")
                                    for k, v in metrics.clip_score.items()) or "—"
    return cells


TABLE1_COLUMNS = ["OA", *[f"{s} MG{k}" for s in ("COCO", "ADE20K") for k in range(2, 6)], "FID (C)", "FID (F)",
                  "FID (other)", "latency", "mIoU", "OptiGen", "CLIP score"]


def render_table1(benchmark: str | None, models: list[ModelReport], comparisons: list[Comparison]) -> str:
    """The paper's Table 1 layout: our models' rows, then the paper's SD1.4 and TokenCompose rows for reference,
    then the paired differences to the first model."""
    lines = ["## Beside the paper's Table 1", "",
             "Our rows: this run (OA = VISOR object accuracy; MG_k of the benchmark run; FID against the named real "
             "sets; latency in s/image on this run's device and settings; mIoU: DAAM's protocol and/or the fast "
             "grounding variant, as named). The "
             "paper's rows are its published figures (mIoU: DAAM after null-text inversion, Table 4), printed for "
             "reference: they compare with ours only where the protocol matches (docs/evaluation.md).", "",
             "| model | " + " | ".join(TABLE1_COLUMNS) + " |", "|---|" + "---:|" * len(TABLE1_COLUMNS)]
    for m in models:
        ours = _model_cells(m, benchmark)
        lines.append(f"| {m.label} | " + " | ".join(ours[c] for c in TABLE1_COLUMNS) + " |")
    for row in paper_rows():
        paper = {**{c: row.get(c, "") or "—" for c in TABLE1_COLUMNS}, "FID (other)": "—", "OptiGen": "—",
                 "CLIP score": "—", "latency": f"{row['latency']} ± {row['latency std']}", "mIoU": row["mIoU (DAAM)"]}
        lines.append(f"| paper: {row['model']} | " + " | ".join(paper[c] for c in TABLE1_COLUMNS) + " |")
    differences = [(c.model, c.metrics) for c in comparisons if c.metrics]
    if differences:
        names = sorted({name for _, metrics in differences for name in metrics})
        lines += ["", f"Differences to {comparisons[0].baseline} on the same prompts and seeds (rates and CLIP score: "
                      "paired bootstrap interval over prompts; FID, latency, mIoU: plain difference).", "",
                  "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label, metrics in differences:
            cells: list[str] = []
            for name in names:
                d = metrics.get(name)
                if d is None:
                    cells.append("—")
                elif d.get("low") is None:
                    cells.append(_fmt(d["diff"], 3, sign=True))
                else:
                    cells.append(f"{_fmt(d['diff'], sign=True)} [{_fmt(d['low'], sign=True)}, "
                                 f"{_fmt(d['high'], sign=True)}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
