"""`tokencompose train`: the train-tokencompose flow, or the trainer directly (under `accelerate launch`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, given_values, load_config
from tokencompose.schemas.training import TrainConfig


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune Stable Diffusion with TokenCompose's losses",
        description="Train the train-tokencompose flow on build-grounded-coco shards. Every TrainConfig field "
                    "is a flag; flags override the --config file.")
    parser.add_argument("--config", type=Path, help="a JSON, YAML or TOML file with TrainConfig fields")
    parser.add_argument("--demo", action="store_true",
                        help="train a tiny random-weight model on the bundled sample (CPU, under a minute, "
                             "nothing downloaded) into --output-dir (default runs/demo)")
    parser.add_argument("--no-prefect", action="store_true",
                        help="run the trainer directly (use this under `accelerate launch`)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    source = add_config_flags(parser, TrainConfig)
    parser.set_defaults(handler=run_train, config_source=source)


def demo_folder(args: argparse.Namespace) -> Path:
    from tokencompose.tasks.training.demo import DEFAULT_DEMO_DIR

    return Path(given_values(args.config_source, args).get("output_dir") or DEFAULT_DEMO_DIR)


def demo_preset(args: argparse.Namespace) -> dict:
    """With --demo: the tiny model and the sample's shards, made in --output-dir (default runs/demo)."""
    if not args.demo:
        return {}
    from tokencompose.tasks.training.demo import prepare_demo

    return prepare_demo(demo_folder(args))


def run_train(args: argparse.Namespace) -> int:
    if args.quiet:
        from tokencompose.tasks.progress import set_quiet

        set_quiet()
    if args.demo:  # the demo writes its model and shards there before the configuration exists
        from tokencompose.tasks.models.preflight import output_problems

        problems = output_problems(demo_folder(args), "output_dir")
        if problems:
            print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
            return 2
    config = load_config(TrainConfig, args, "training configuration", demo_preset(args))
    if config is None:
        return 2
    if args.print_config:
        print(config.to_json())
    from tokencompose.tasks.models.preflight import train_problems

    problems = train_problems(config)
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    if args.print_config:
        return 0
    try:
        if args.no_prefect:
            import logging

            from tokencompose.flows.train import run_summary
            from tokencompose.tasks.training.trainer import train

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            summary = run_summary(train(config))
        else:
            from tokencompose.flows.train import train_tokencompose

            summary = train_tokencompose(config=config)
    except FileNotFoundError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if type(error).__name__ not in ("TrainingDiverged", "TooMuchBadData", "DataError"):
            raise
        print(f"training failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, default=str))
    return 0
