"""`tokencompose build`: build grounded COCO shards (the build-grounded-coco flow, or its stages directly)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, load_config
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


def demo_preset(args: argparse.Namespace) -> dict:
    """With --demo: the bundled sample as the source (a --config file is under it, flags over it)."""
    from tokencompose.data import demo_settings

    return demo_settings() if args.demo else {}


def run_build(args: argparse.Namespace) -> int:
    from tokencompose.tasks.shards.finalize import BuildFailed
    from tokencompose.tasks.shards.output import ConfigurationError

    config = load_config(BuildConfig, args, "configuration", demo_preset(args))
    if config is None:
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
