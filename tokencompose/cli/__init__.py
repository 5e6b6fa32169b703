"""The `tokencompose` command. Each subcommand lives in its own module, imported only when it runs,
so `tokencompose --help` and a configuration error answer without loading torch or Prefect."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module with add_cli(subparsers), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("tokencompose.cli.build", "build grounded COCO shards (the build-grounded-coco flow)"),
    "train": ("tokencompose.cli.train", "fine-tune Stable Diffusion with TokenCompose's losses"),
    "view": ("tokencompose.cli.view", "browse a built shard set in a local web viewer"),
    "models": ("tokencompose.cli.models", "list the model weights that are present and missing"),
    "retrain": ("tokencompose.cli.retrain", "one round of scheduled retraining: grow, train, judge, promote"),
    "serve": ("tokencompose.cli.serve", "serve the deployments for `prefect deployment run`"),
    "wait-for-server": ("tokencompose.cli.server", "wait until the Prefect server at PREFECT_API_URL is up"),
    "evaluate": ("tokencompose.cli.evaluate", "MultiGen: generate, detect and score a model's images"),
    "attention": ("tokencompose.cli.attention", "cross-attention maps of each noun token for one prompt"),
}


def parser_for(chosen: str | None) -> argparse.ArgumentParser:
    from tokencompose import __version__

    parser = argparse.ArgumentParser(prog="tokencompose", description="Grounded COCO data for TokenCompose, and training with it.")
    parser.add_argument("--version", action="version", version=f"tokencompose {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_cli(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The first start of Prefect's temporary server migrates its database: slow on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = parser_for(chosen if chosen in COMMANDS else None).parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
