"""The train-tokencompose flow and the ``tokencompose train`` subcommand.

The flow only orchestrates: it validates the configuration, runs :mod:`tokencompose.training`
(one process; for several GPUs run ``accelerate launch -m tokencompose.cli train --no-prefect ...``
instead, every rank then runs the trainer directly), mirrors progress into a Prefect progress
artifact and log lines, and leaves a markdown summary artifact.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import ValidationError

from tokencompose.schemas.settings_file import read_settings
from tokencompose.training.config import TrainConfig

FLOW_NAME = "train-tokencompose"


def _summary(result) -> dict[str, Any]:
    return {"output_dir": str(result.output_dir), "steps": result.steps,
            "pipeline_dir": str(result.pipeline_dir) if result.pipeline_dir else None,
            "loss_curve": str(result.loss_curve) if result.loss_curve else None,
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "stats": result.stats, "last_metrics": result.last_metrics}


def _markdown(summary: dict[str, Any]) -> str:
    rows = [("steps", summary["steps"]), ("pipeline", summary["pipeline_dir"]), ("loss curve", summary["loss_curve"])]
    rows += [(f"count: {k}", v) for k, v in summary["stats"].items()]
    rows += [(k, f"{v:.5g}" if isinstance(v, float) else v) for k, v in summary["last_metrics"].items()
             if not k.startswith("count/")]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


@flow(name=FLOW_NAME, log_prints=False)
def train_tokencompose(config: TrainConfig) -> dict[str, Any]:
    """Fine-tune a Stable Diffusion UNet with TokenCompose's grounding losses on build-grounded-coco shards."""
    from tokencompose.training.trainer import Trainer, format_record

    logger = get_run_logger()
    artifact = create_progress_artifact(progress=0.0, key="train-tokencompose-progress",
                                        description=f"training {config.output_dir}")

    def progress(step: int, total: int, record: dict) -> None:
        update_progress_artifact(artifact_id=artifact, progress=100.0 * step / total)
        logger.info(format_record(record))

    trainer = Trainer(config, progress)
    if trainer.state.step:
        logger.info("resuming at step %d of %d", trainer.state.step, config.max_steps)
    result = trainer.train()
    update_progress_artifact(artifact_id=artifact, progress=100.0)
    summary = _summary(result)
    create_markdown_artifact(markdown=_markdown(summary), key="train-tokencompose-summary",
                             description="final metrics of the training run")
    logger.info("done: %d steps, pipeline at %s", result.steps, summary["pipeline_dir"])
    return summary


# ------------------------------------------------------------------------------------------------ CLI
TRAIN_FLAGS = {  # argparse destination -> TrainConfig field
    "pretrained_model": "pretrained_model", "shards": "shards", "output_dir": "output_dir",
    "resolution": "resolution", "max_steps": "max_steps", "batch_size": "train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "learning_rate": "learning_rate", "aggregation": "aggregation",
    "token_weight": "token_weight", "pixel_weight": "pixel_weight", "spatial_weight": "spatial_weight",
    "mixed_precision": "mixed_precision", "seed": "seed", "num_workers": "num_workers",
    "checkpoint_every": "checkpoint_every", "log_every": "log_every", "train_layers": "train_layers",
}
NEGATIONS = {"no_gradient_checkpointing": "gradient_checkpointing", "no_resume": "resume", "no_export": "export"}


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``train`` on an argparse subparsers object; the handler is ``args.handler(args)``."""
    parser = subparsers.add_parser("train", help="fine-tune Stable Diffusion with TokenCompose's losses",
                                   description="Train the train-tokencompose flow on build-grounded-coco shards. "
                                               "Flags override the --config file.")
    parser.add_argument("--config", type=Path, help="a JSON or YAML file with TrainConfig fields")
    parser.add_argument("--pretrained-model", help="local diffusers Stable Diffusion folder")
    parser.add_argument("--shards", nargs="+", help="shard files, globs or brace patterns")
    parser.add_argument("--output-dir", help="checkpoints, metrics, loss curve and the exported pipeline")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default 24000)")
    parser.add_argument("--batch-size", type=int, help="per device (default 1)")
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 4)")
    parser.add_argument("--learning-rate", type=float, help="default 5e-6")
    parser.add_argument("--aggregation", choices=["reference", "normalized"])
    parser.add_argument("--token-weight", type=float, help="lambda (default 1e-3)")
    parser.add_argument("--pixel-weight", type=float, help="gamma (default 5e-5)")
    parser.add_argument("--spatial-weight", type=float, help="spatial loss weight (default 0: off)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int, help="DataLoader workers")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--train-layers", nargs="+", help="UNet attention blocks, e.g. mid_block.attentions.0")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--no-export", action="store_true", help="skip the final pipeline folder")
    parser.add_argument("--no-prefect", action="store_true",
                        help="run the trainer directly (use this under `accelerate launch`)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.set_defaults(handler=run_train_cli)
    return parser


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    settings: dict[str, Any] = read_settings(args.config) if args.config else {}
    for flag, name in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            settings[name] = value
    for flag, name in NEGATIONS.items():
        if getattr(args, flag, False):
            settings[name] = False
    return TrainConfig.model_validate(settings)


def run_train_cli(args: argparse.Namespace) -> int:
    try:
        config = train_config_from_args(args)
    except ValidationError as error:
        lines = [f"  - {'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()]
        print("invalid training configuration:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"cannot read --config: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config.to_json())
        return 0
    try:
        if args.no_prefect:
            import logging

            from tokencompose.training.trainer import train

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            summary = _summary(train(config))
        else:
            summary = train_tokencompose(config=config)
    except FileNotFoundError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tokencompose.flows.train [flags]``: the ``train`` subcommand on its own (e.g. for
    ``accelerate launch -m tokencompose.flows.train --no-prefect ...``)."""
    from tokencompose.cli import run_subcommand

    return run_subcommand(add_cli, "train", argv)


if __name__ == "__main__":
    sys.exit(main())
