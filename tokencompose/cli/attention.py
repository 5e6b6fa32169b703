"""`tokencompose attention`: a PNG grid of each noun's cross-attention map for one prompt."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, load_config
from tokencompose.schemas.evaluation import AttentionConfig


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention", help="cross-attention maps of each noun token for one prompt",
        description="Generate one image and write, beside it, a grid of each noun's cross-attention map "
                    "(middle block and decoder, averaged over the denoising steps), as in TokenCompose's "
                    "figures. Nouns: --noun (repeatable), else spaCy's noun phrases of the prompt.")
    parser.add_argument("--config", type=Path, help="a JSON, YAML or TOML file with AttentionConfig fields")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    source = add_config_flags(parser, AttentionConfig)
    parser.set_defaults(handler=run_attention, config_source=source)


def run_attention(args: argparse.Namespace) -> int:
    config = load_config(AttentionConfig, args, "attention configuration")
    if config is None:
        return 2
    import logging

    from tokencompose.tasks.progress import set_quiet

    if args.quiet:
        set_quiet()
    if not logging.getLogger().handlers:  # the progress lines when stderr is not a terminal
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from tokencompose.tasks.multigen.attention_maps import INFO_FILE, attention_for_prompt
    from tokencompose.tasks.multigen.generation import ModelFolderError
    from tokencompose.tasks.multigen.run import EvaluationError

    try:
        grid = attention_for_prompt(config)
    except (EvaluationError, ModelFolderError, ValueError) as error:
        print(str(error), file=sys.stderr)
        return 2
    info = json.loads((grid.parent / INFO_FILE).read_text())
    print(json.dumps({"grid": str(grid), "image": str(grid.parent / "image.png"), "nouns": info["nouns"],
                      "skipped": info["skipped"]}, indent=1))
    return 0
