"""The `tokencompose` command: build, serve, and the subcommands of the other flows."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.settings_file import read_settings


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


# Modules whose add_cli(subparsers) registers a subcommand of their own.
SUBCOMMAND_MODULES = ["tokencompose.viewer.app", "tokencompose.flows.train", "tokencompose.models"]

BUILD_FLAGS = {  # flag destination -> configuration field
    "images_dir": "source.images_dir", "captions": "source.captions_json", "instances": "source.instances_json",
    "policy": "selection.policy", "vsr": "selection.vsr_files", "limit": "selection.limit",
    "out": "output.out_dir", "shard_size": "output.shard_size", "overwrite": "output.overwrite",
    "profile": "profile", "workers": "workers", "models_dir": "models.models_dir", "device": "models.device",
}


def build_config_from_args(args: argparse.Namespace) -> BuildConfig:
    from tokencompose.data import demo_settings

    settings: dict = read_settings(args.config) if args.config else {}
    if args.demo:
        for key, value in demo_settings().items():
            settings.setdefault(key, value)
    for flag, field in BUILD_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and value is not False:
            _set(settings, field, value)
    return BuildConfig.model_validate(settings)


def _explain(error: ValidationError) -> str:
    lines = [f"  - {'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()]
    return "invalid configuration:\n" + "\n".join(lines)


def _add_build(subparsers) -> None:
    parser = subparsers.add_parser("build", help="build grounded COCO shards (runs the Prefect flow locally)",
                                   description="Build a grounded COCO dataset as WebDataset shards.")
    parser.add_argument("--demo", action="store_true", help="use the bundled sample as source")
    parser.add_argument("--config", type=Path, help="a JSON or YAML file with the build configuration")
    parser.add_argument("--out", help="output folder (output.out_dir)")
    parser.add_argument("--images-dir", help="COCO image folder, e.g. train2017/")
    parser.add_argument("--captions", help="captions JSON, e.g. annotations/captions_train2017.json")
    parser.add_argument("--instances", help="instances JSON (masks for the coco/hybrid grounding)")
    parser.add_argument("--policy", choices=["vsr", "all"], help="which images to select")
    parser.add_argument("--vsr", action="append", help="a VSR JSON Lines split file (repeatable)")
    parser.add_argument("--limit", type=int, help="keep only the first N selected images")
    parser.add_argument("--shard-size", type=int, help="samples per shard (default 500)")
    parser.add_argument("--profile", choices=["offline", "paper", "hybrid"], help="which backends (default offline)")
    parser.add_argument("--workers", type=int, help="shards built at once (default 1)")
    parser.add_argument("--models-dir", help="folder with model weights (paper/hybrid profiles)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset of another configuration")
    parser.add_argument("--no-prefect", action="store_true", help="run the stages directly, without Prefect")
    parser.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from tokencompose.tasks.dataset import ConfigurationError

    try:
        config = build_config_from_args(args)
    except ValidationError as error:
        print(_explain(error), file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"cannot read --config: {error}", file=sys.stderr)
        return 2
    try:
        if args.no_prefect:
            from tokencompose.tasks.dataset import build_directly

            stats = build_directly(config)
            print(json.dumps({"samples": stats.samples, "nouns": stats.nouns, "nouns_with_mask": stats.nouns_with_mask}))
        else:
            from tokencompose.flows.build import build_grounded_coco

            summary = build_grounded_coco(config=config)
            print(json.dumps(summary, indent=1))
    except ConfigurationError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 2
    print(f"dataset written to {config.output.out_dir}")
    return 0


def _add_serve(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the deployments for `prefect deployment run`",
                                   description="Serve build-grounded-coco/local (needs PREFECT_API_URL "
                                               "pointing at a running Prefect server).")
    parser.add_argument("--out", default="tokencompose-out", help="default output folder of the deployment")
    parser.add_argument("--cron", help="also run on this schedule, e.g. '0 3 * * 0'")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from tokencompose.flows.deployments import serve_deployments

    serve_deployments(out_dir=args.out, cron=args.cron)
    return 0


def run_subcommand(add_cli, name: str, argv: list[str] | None = None) -> int:
    """Run one subcommand on its own (``python -m MODULE ARGS`` is ``tokencompose NAME ARGS``)."""
    parser = argparse.ArgumentParser(prog=f"tokencompose {name}")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    parser = argparse.ArgumentParser(prog="tokencompose", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_build(subparsers)
    _add_serve(subparsers)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_cli(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
