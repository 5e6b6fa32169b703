"""The scheduled retraining (flows/retrain.py) run for real on the synthetic world, one round per call:
the training world grows by ``grow_images`` new images (same seed: the images already there come out
byte-identical, the build adds only the new ones as a new dataset version), a candidate trains from
the current model (the registry's promoted one, else the world demo's grounded model) with the
grounding losses, both are evaluated on the world's MultiGen prompts with the exact detector, and the
normal promotion gate (RetrainConfig.gate) promotes or rejects it; the registry entry records every
criterion. FID and CLIP score are not judged (gate tolerances null, as docs/retraining.md says for a
run without real images): their Inception and CLIP weights cannot be had offline.

Needs the world demo's output in the same folder (``run_world_demo``); writes ``registry/``,
``runs/retrain/<entry>/`` and ``retrain.md`` there.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokencompose.tasks.demo.world import (GROUNDED, Progress, WorldProtocol, build_config, evaluation_settings,
                                           say_to, train_settings)

RETRAIN_FILE = "retrain.md"


def world_model(out: Path) -> Path:
    """The world demo's grounded model: where the retraining starts while nothing is promoted."""
    return Path(out) / "runs" / GROUNDED / "pipeline"


def retrain_problems(out: Path) -> list[str]:
    """What the world demo must have left in ``out`` before a retraining round can run."""
    out = Path(out)
    needed = {world_model(out) / "model_index.json": "grounded model", out / "source" / "train" / "world.json":
              "training world", out / "prompts.json": "prompts"}
    return [f"{path} is missing (the world demo's {what}): run `tokencompose demo world --out {out}` first"
            for path, what in needed.items() if not path.is_file()]


def retrain_config(out: Path, protocol: WorldProtocol):
    """The RetrainConfig of a world round: the world's build, the world trainings' settings, the world's
    evaluation, the default gate less FID and CLIP score."""
    from tokencompose.schemas.retrain import RetrainConfig

    evaluation = evaluation_settings(out / "prompts.json", protocol, protocol.retrain_images_per_prompt)
    evaluation["benchmark"]["limit"] = protocol.retrain_prompts
    return RetrainConfig.model_validate({
        "build": build_config(out / "source" / "train", out / "data" / "train").model_dump(mode="json"),
        "base_model": str(world_model(out)), "registry_dir": str(out / "registry"),
        "runs_dir": str(out / "runs" / "retrain"), "steps": protocol.retrain_steps,
        "train": {**train_settings(protocol, grounded=True), "checkpoint_every": protocol.retrain_steps},
        "evaluation": evaluation,
        "gate": {"fid_tolerance": None, "clip_tolerance": None}})


def grow_world(source: Path, images: int) -> int:
    """Add ``images`` images to a training world (regenerated with its seed and a larger count: the first
    ones are the same bytes); returns the new count."""
    from tokencompose.tasks.source.world import WORLD_FILE, write_world

    world = json.loads((source / WORLD_FILE).read_text())
    count = world["images"] + images
    write_world(source, count, world["seed"], world["image_size"],
                held_out=[tuple(pair) for pair in world["held_out_pairs"]])
    return count


def needs_growth(config) -> bool:
    """True unless the dataset's latest version is new to the registry (a round that stopped before
    training left it): the world demo's own build, or a version a registry entry used, is not new."""
    from tokencompose.tasks.registry.promotion import already_used, latest_dataset
    from tokencompose.tasks.registry.store import ModelRegistry

    version = latest_dataset(config.build.output.out_dir).version
    if version == 1:
        return True
    return already_used(ModelRegistry(config.registry_dir), config.build.output.out_dir, version) is not None


def run_world_retrain(out: Path, protocol: WorldProtocol = WorldProtocol(), progress: Progress | None = None) -> dict:
    """One retraining round on the world in ``out``; returns the flow's summary, with the report's path."""
    import torch

    from tokencompose.flows.retrain import retrain_tokencompose

    out = Path(out)
    problems = retrain_problems(out)
    if problems:
        raise FileNotFoundError("; ".join(problems))
    torch.set_num_threads(protocol.threads)
    say = say_to(progress)
    config = retrain_config(out, protocol)
    if needs_growth(config):
        count = grow_world(out / "source" / "train", protocol.grow_images)
        say(f"world grown by {protocol.grow_images} images to {count}")
    say(f"retraining round: build, {protocol.retrain_steps} steps from the current model, evaluation, gate")
    summary = retrain_tokencompose(config=config)
    summary = {k: v for k, v in summary.items() if k != "build"}
    summary["report"] = str(write_retrain_report(out, config, summary))
    say(f"{summary['status']}: {summary.get('reason', '')}")
    return summary


def write_retrain_report(out: Path, config, summary: dict) -> Path:
    """retrain.md: the round's decision and, when it was judged, the gate's criteria from the registry entry."""
    from tokencompose.tasks.registry.promotion import gate_settings_line, gate_table
    from tokencompose.tasks.registry.store import ModelRegistry

    lines = ["# The synthetic world: a retraining round", "", f"Status: **{summary['status']}**"]
    if "entry" in summary:
        entry = ModelRegistry(config.registry_dir).entry(summary["entry"])
        lines += ["", f"Registry entry `{entry.id}` ({config.registry_dir}): trained {entry.steps} steps from "
                  f"`{entry.base_model}` on dataset version {entry.dataset_version} ({len(entry.dataset_shards)} "
                  f"shards).", "", f"Reason: {entry.reason}"]
        if entry.gate is not None:
            lines += ["", *gate_table(entry.gate), "", gate_settings_line(entry.gate.settings)]
        if entry.multigen is not None:
            lines += ["", "MultiGen means: candidate " + ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(entry.multigen.scores.items())) + f"; report {entry.multigen.report}"]
    else:
        lines += ["", json.dumps(summary, default=str)]
    path = Path(out) / RETRAIN_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
