"""`tokencompose retrain`: one retraining round (grow, train, judge, promote) run locally."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, load_config
from tokencompose.schemas.retrain import RetrainConfig


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "retrain", help="one round of scheduled retraining: grow the data, train, judge, promote",
        description="Run the retrain-tokencompose flow once (the scheduled deployment runs the same flow). "
                    "Every RetrainConfig field is a flag; flags override the --config file.")
    parser.add_argument("--config", type=Path, help="a JSON, YAML or TOML file with RetrainConfig fields")
    source = add_config_flags(parser, RetrainConfig)
    parser.set_defaults(handler=run_retrain, config_source=source)


def run_retrain(args: argparse.Namespace) -> int:
    config = load_config(RetrainConfig, args, "retraining configuration")
    if config is None:
        return 2
    from tokencompose.tasks.models.preflight import build_problems
    from tokencompose.tasks.registry.promotion import evaluation_input_problems

    problems = build_problems(config.build)
    if not Path(config.base_model).is_dir():
        problems.append(f"base_model: {config.base_model} is not a folder")
    problems += evaluation_input_problems(config)
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    from tokencompose.flows.retrain import retrain_tokencompose

    summary = retrain_tokencompose(config=config)
    print(json.dumps(summary, indent=1, default=str))
    return 0 if summary.get("status") != "failed" else 1
