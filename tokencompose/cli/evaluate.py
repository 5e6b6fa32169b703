"""`tokencompose evaluate`: the evaluate-multigen flow, or the run directly (under `accelerate launch`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, load_config
from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.schemas.runner import RunnerError


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="MultiGen: generate, detect and score a model's images",
        description="MultiGen (TokenCompose's benchmark) on local Stable Diffusion folders: seeded images per "
                    "prompt into WebDataset shards, OWLv2 detection, MG1-MG5 and a report comparing the models. "
                    "Every EvaluateConfig field is a flag; flags override the --config file. Quick mode: "
                    "--prompts N --images K. Several GPUs: accelerate launch -m tokencompose evaluate --no-prefect ...")
    parser.add_argument("--config", type=Path, help="a JSON, YAML or TOML file with EvaluateConfig fields")
    parser.add_argument("--no-prefect", action="store_true",
                        help="run without Prefect (use this under `accelerate launch` or torchrun)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    source = add_config_flags(parser, EvaluateConfig)
    parser.set_defaults(handler=run_evaluate, config_source=source)


def run_evaluate(args: argparse.Namespace) -> int:
    config = load_config(EvaluateConfig, args, "evaluation configuration")
    if config is None:
        return 2
    if args.print_config:
        print(config.to_json())
        return 0
    from tokencompose.tasks.models.preflight import evaluate_problems

    problems = evaluate_problems(config)
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    from tokencompose.tasks.multigen.generation import ModelFolderError
    from tokencompose.tasks.multigen.run import EvaluationError, evaluate_cli_summary, preflight

    try:
        preflight(config)   # a run that cannot start is told once, before Prefect logs a failed flow run
    except (EvaluationError, ModelFolderError) as error:
        print(str(error), file=sys.stderr)
        return 2
    try:
        if args.no_prefect:
            import logging

            from tokencompose.tasks.multigen.run import evaluate_models

            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
            report = evaluate_models(config)
            if report is None:  # not rank 0: rank 0 writes the report
                return 0
            summary = evaluate_cli_summary(report)
        else:
            from tokencompose.flows.evaluate import evaluate_on_runner

            summary = evaluate_on_runner(config)  # on config.runner: threads, Dask or Ray
    except (EvaluationError, ModelFolderError) as error:
        print(str(error), file=sys.stderr)
        return 2
    except RunnerError as error:
        print(f"cannot start on {config.runner.describe()}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
