"""The world demo's report: plain vs grounded, from the normal evaluation's outputs.

Composition: MG2..MG5 of each model and the paired-bootstrap difference (from the MultiGen report),
then the same over the prompts that ask for a held-out pair and over the others, apart. Grounding:
the attention-mask IoU of each (test image, noun) for both models (the evaluation's grounding.json),
their mean difference with a paired-bootstrap interval over (image, noun) pairs; the same for the
specificity (the IoU minus the mean IoU against the image's other nouns' masks) and the token attribution
(the IoU minus the IoU of the next / previous token's map on the same mask; docs/world.md, protocol v3),
whose grounded - plain is the noun token's gain minus its neighbour's. Pictures: each
model's sample grid and attention grids (made by the evaluation) and both loss curves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokencompose.tasks.multigen.metrics import paired_bootstrap, paired_mean_difference, success_table
from tokencompose.tasks.source.world import HELD_OUT_PAIRS, allowed

LEVELS = (2, 3, 4, 5)
PLAIN, GROUNDED = "plain", "grounded"     # the two models' labels in the evaluation
REPORT_FILE = "report.md"


# what each per-noun figure subtracts from the noun's IoU: nothing, or a field of its grounding.json record
SUBTRACTED = {"iou": None, "specificity": "other_iou", "attribution_next": "next_iou",
              "attribution_previous": "previous_iou"}


def noun_ious(evaluation: Path, label: str, quantity: str = "iou") -> dict[tuple[str, str], float]:
    """(sample key, noun and its tokens) -> one model's per-noun ``quantity`` from its grounding.json: the IoU,
    the specificity (minus the mean IoU against the image's other nouns' masks) or the next / previous token's
    attribution (minus that token's IoU with the noun's mask); nouns without the subtracted figure left out."""
    if quantity not in SUBTRACTED:
        raise ValueError(f"unknown per-noun quantity {quantity!r}; one of {', '.join(SUBTRACTED)}")
    field = SUBTRACTED[quantity]
    result = json.loads((evaluation / label / "grounding.json").read_text())["result"]
    return {(n["key"], f"{n['noun']}@{n['tokens']}"): float(n["iou"]) - (float(n[field]) if field else 0.0)
            for n in result["per_noun"] if field is None or n.get(field) is not None}


def iou_comparison(evaluation: Path, samples: int, seed: int, confidence: float, quantity: str = "iou") -> dict:
    """Both models' mean per-noun ``quantity`` (:func:`noun_ious`) and grounded - plain with its paired
    bootstrap over (image, noun)."""
    plain, grounded = noun_ious(evaluation, PLAIN, quantity), noun_ious(evaluation, GROUNDED, quantity)
    common = sorted(set(plain) & set(grounded))
    a, b = [plain[k] for k in common], [grounded[k] for k in common]
    compared = paired_mean_difference(a, b, samples, seed, confidence)
    return {"plain": float(np.mean(a)) if a else float("nan"), "grounded": float(np.mean(b)) if b else float("nan"),
            "diff": compared["diff"], "low": compared["low"], "high": compared["high"], "pairs": len(common),
            "images": len({k for k, _ in common})}


def pooled_rate(rows: list[dict], threshold: float, k: int) -> float:
    prompt_ids = sorted({r["prompt_id"] for r in rows})
    success, scored = success_table(rows, threshold, k, prompt_ids)
    return float(100.0 * success.sum() / scored.sum()) if scored.sum() else float("nan")


def held_out_split(config, rows: dict[str, list[dict]]) -> dict[str, dict]:
    """MG_k of each model and the paired difference over held-out-pair prompts and over the others."""
    from tokencompose.tasks.multigen.prompts import load_prompts

    held = {p.id for p in load_prompts(config.benchmark.file) if not allowed(p.categories, HELD_OUT_PAIRS)}
    threshold, settings = config.detection.threshold, config.report
    split: dict[str, dict] = {}
    for name, keep in (("held-out pair", lambda pid: pid in held), ("other", lambda pid: pid not in held)):
        part = {label: [r for r in model_rows if keep(r["prompt_id"])] for label, model_rows in rows.items()}
        prompts = len({r["prompt_id"] for r in part[PLAIN]})
        split[name] = {"prompts": prompts, "levels": {
            f"MG{k}": {PLAIN: pooled_rate(part[PLAIN], threshold, k), GROUNDED: pooled_rate(part[GROUNDED], threshold, k),
                       **paired_bootstrap(part[PLAIN], part[GROUNDED], threshold, k, settings.bootstrap_samples,
                                          settings.bootstrap_seed, settings.confidence)}
            for k in LEVELS}}
    return split


ATTRIBUTIONS = {"attribution_next": "the token after the noun", "attribution_previous": "the token before the noun"}


def attribution_lines(compared: dict[str, dict], confidence: float) -> list[str]:
    """The report's token attribution section (docs/world.md, protocol v3)."""
    lines = ["## Token attribution (the noun's token versus its neighbours, on the noun's mask)", "",
             "IoU(noun's map) - IoU(neighbour token's map), both with the noun's mask, per (image, noun), averaged; "
             "grounded - plain: the noun token's IoU gain minus the neighbour's (docs/world.md, protocol v3).", "",
             "| neighbour | plain | grounded | grounded - plain | pairs |", "|---|---|---|---|---|"]
    for quantity, neighbour in ATTRIBUTIONS.items():
        entry = compared[quantity]
        lines.append(f"| {neighbour} | {entry['plain']:.4f} | {entry['grounded']:.4f} | {interval(entry, 4)} "
                     f"| {entry['pairs']} |")
    return lines + ["", f"({confidence:.0%} paired bootstrap over (image, noun) pairs)", ""]


def interval(entry: dict, digits: int = 2) -> str:
    return f"{entry['diff']:+.{digits}f} [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]"


def write_report(out: Path, config, report, protocol, multigen: bool = True) -> Path:
    """report.md and figures.json in ``out``; ``protocol``: the demo's WorldProtocol."""
    from tokencompose.tasks.multigen.plan import preflight
    from tokencompose.tasks.multigen.run import rows_by_model

    out = Path(out)
    evaluation = Path(config.out_dir)
    settings = config.report
    compared = {quantity: iou_comparison(evaluation, settings.bootstrap_samples, settings.bootstrap_seed,
                                         settings.confidence, quantity) for quantity in SUBTRACTED}
    iou, specific = compared["iou"], compared["specificity"]
    figures: dict = {"protocol": dict(vars(protocol)), "attention_iou": iou, "specificity": specific,
                     **{q: compared[q] for q in ATTRIBUTIONS}}
    lines = ["# The synthetic world: plain vs grounded", "",
             f"Protocol (docs/world.md): world seed {protocol.seed}, {protocol.image_size} px, "
             f"{protocol.train_images} training images (held-out pairs: "
             f"{', '.join(' + '.join(p) for p in HELD_OUT_PAIRS)}), {protocol.test_images} test images; "
             f"tiny SD from seed {protocol.seed}, {protocol.train_steps} steps x {protocol.batch_size}, "
             f"lr {protocol.learning_rate}; plain: L_LDM only; grounded: + token loss x1e-3 and pixel loss x5e-5 "
             f"(the paper's).", "",
             "## Attention-mask IoU (test world, fast protocol)", "",
             "| model | mIoU |", "|---|---|",
             f"| plain | {iou['plain']:.4f} |", f"| grounded | {iou['grounded']:.4f} |", "",
             f"grounded - plain: {interval(iou, 4)} ({settings.confidence:.0%} paired bootstrap over "
             f"{iou['pairs']} (image, noun) pairs of {iou['images']} images)", "",
             "## Specificity (a noun's map on its own mask versus the image's other nouns' masks)", "",
             "IoU(own mask) - mean IoU(the other nouns' masks), per (image, noun), averaged (docs/world.md).", "",
             "| model | specificity |", "|---|---|",
             f"| plain | {specific['plain']:.4f} |", f"| grounded | {specific['grounded']:.4f} |", "",
             f"grounded - plain: {interval(specific, 4)} ({settings.confidence:.0%} paired bootstrap over "
             f"{specific['pairs']} (image, noun) pairs of {specific['images']} images)", ""]
    lines += attribution_lines(compared, settings.confidence)
    if multigen:
        plan = preflight(config)
        split = held_out_split(config, rows_by_model(plan))
        figures["multigen"] = {m.label: m.mg for m in report.models}
        figures["multigen_difference"] = report.comparisons[0].mg if report.comparisons else {}
        figures["held_out_split"] = split
        lines += ["## Composition (MultiGen over the world's 56 prompts, exact detector)", "",
                  "| model | " + " | ".join(f"MG{k}" for k in LEVELS) + " |", "|---|" + "---|" * len(LEVELS)]
        for model in report.models:
            lines.append(f"| {model.label} | " + " | ".join(
                f"{model.mg[f'MG{k}']['mean']:.2f} ± {model.mg[f'MG{k}']['std']:.2f}" for k in LEVELS) + " |")
        if report.comparisons:
            lines += ["", "grounded - plain (pooled, paired bootstrap over prompts): " + "; ".join(
                f"MG{k} {interval(report.comparisons[0].mg[f'MG{k}'])}" for k in LEVELS)]
        lines += ["", "### Held-out pairs apart", "",
                  "| prompts | n | " + " | ".join(f"MG{k} plain / grounded / diff [interval]" for k in LEVELS) + " |",
                  "|---|---|" + "---|" * len(LEVELS)]
        for name, part in split.items():
            lines.append(f"| {name} | {part['prompts']} | " + " | ".join(
                f"{v[PLAIN]:.1f} / {v[GROUNDED]:.1f} / {interval(v, 1)}" for v in part["levels"].values()) + " |")
        lines += ["", "## Images", ""]
        for model in report.models:
            if model.grid:
                lines.append(f"{model.label}: ![{model.label} samples](evaluation/{model.grid})")
            lines += [f"{model.label} attention: ![attention](evaluation/{a})" for a in model.attention]
        lines += ["", f"The full MultiGen report: `{report.markdown_path}`"]
    lines += ["", "## Loss curves", ""]
    lines += [f"{name}: ![{name} loss](runs/{name}/loss_curve.png)" for name in (PLAIN, GROUNDED)
              if (out / "runs" / name / "loss_curve.png").is_file()]
    (out / "figures.json").write_text(json.dumps(figures, indent=1, default=str))
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
