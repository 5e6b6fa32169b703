"""`tokencompose build`: build grounded COCO shards (the build-grounded-coco flow, or its stages directly)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from tokencompose.cli.options import add_config_flags, explain, given_values, merged, read_settings_file
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.runner import RunnerError


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "build", help="build grounded COCO shards (runs the Prefect flow locally)",
        description="Build a grounded COCO dataset as WebDataset shards. Every configuration field is a flag; "
                    "flags override --demo, which overrides the --config file.")
    parser.add_argument("--config", type=Path, help="a JSON, YAML or TOML file with the build configuration")
    parser.add_argument("--demo", action="store_true", help="use the bundled sample as source")
    parser.add_argument("--no-prefect", action="store_true", help="run the stages directly, without Prefect")
    source = add_config_flags(parser, BuildConfig)
    parser.set_defaults(handler=run_build, config_source=source)


def build_config_from_args(args: argparse.Namespace) -> BuildConfig:
    from tokencompose.data import demo_settings

    demo = demo_settings() if args.demo else {}
    return BuildConfig.model_validate(merged(read_settings_file(args.config), demo,
                                             given_values(args.config_source, args)))


def run_build(args: argparse.Namespace) -> int:
    from tokencompose.tasks.shards.dataset import BuildFailed, ConfigurationError

    try:
        config = build_config_from_args(args)
    except ValidationError as error:
        print(explain(error), file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"cannot read --config: {error}", file=sys.stderr)
        return 2
    from tokencompose.tasks.models.preflight import build_problems

    problems = build_problems(config)
    if problems:
        print("cannot start:\n  - " + "\n  - ".join(problems), file=sys.stderr)
        return 2
    try:
        if args.no_prefect:
            from tokencompose.tasks.shards.dataset import build_directly

            stats = build_directly(config)
            print(json.dumps({"samples": stats.samples, "nouns": stats.nouns, "nouns_with_mask": stats.nouns_with_mask}))
        else:
            from tokencompose.flows.build import build_on_runner

            summary = build_on_runner(config)  # on config.runner: threads, Dask or Ray
            print(json.dumps(summary, indent=1))
    except ConfigurationError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 2
    except BuildFailed as error:
        print(f"build failed: {error} (what finished is reported in {config.output.out_dir}/incomplete.json; "
              "run the same command again to finish)", file=sys.stderr)
        return 1
    except RunnerError as error:
        print(f"cannot start on {config.runner.describe()}: {error}", file=sys.stderr)
        return 2
    print(f"dataset written to {config.output.out_dir}")
    return 0
