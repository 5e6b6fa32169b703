"""The `tokencompose` command. Each subcommand lives in its own module, imported only when it runs,
so `tokencompose --help` and a configuration error answer without loading torch or Prefect."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

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
    "edit": ("tokencompose.cli.edit", "edit a region of an image with a (grounded) model: Blended Latent Diffusion"),
    "edit-bench": ("tokencompose.cli.edit_bench", "PIE-Bench: edit its images with each model and score them"),
    "demo": ("tokencompose.cli.demo", "see the method work: the synthetic world, plain vs grounded, on a CPU"),
}


EXAMPLES: dict[str, tuple[str, ...]] = {
    "build": ("tokencompose build --demo --out out/demo",
              "tokencompose build --source.images-dir coco/val2017 --source.captions-json coco/captions_val2017.json "
              "--source.instances-json coco/instances_val2017.json --out out/coco --profile paper"),
    "train": ("tokencompose train --demo --output-dir runs/demo",
              "tokencompose train --pretrained-model models/CompVis/stable-diffusion-v1-4 --shards "
              "'out/coco/shards/shard-{000000..000009}.tar' --max-steps 24000 --output-dir runs/tc"),
    "evaluate": ("tokencompose evaluate --model models/CompVis/stable-diffusion-v1-4 --model runs/tc/pipeline "
                 "--out eval/mg --prompts 100 --images 2",
                 "tokencompose evaluate --config eval.yaml --visor --latency"),
    "attention": ("tokencompose attention --model runs/tc/pipeline --prompt 'a cat and a dog' --out attention",),
    "retrain": ("tokencompose retrain --config retrain.yaml",),
    "edit": ("tokencompose edit --model runs/tc/pipeline --image cat.jpg --mask-file cat-mask.png --prompt 'a stone' "
             "--out edits/stone",
             "tokencompose edit --model runs/tc/pipeline --image cat.jpg --mask-word cat --mask.source-prompt "
             "'a cat on a sofa' --prompt 'a dog on a sofa' --attention-word dog --out edits/dog"),
    "edit-bench": ("tokencompose edit-bench --root PIE-Bench_v1 --model models/CompVis/stable-diffusion-v1-4 "
                   "--model runs/tc/pipeline --clip-checkpoint models/clip/ViT-L-14.pt --dino models/dino-vitb8 "
                   "--out pie-bench",),
}


# configuration fields the short --help lists beside the shortcuts (flags of commands without shortcuts)
COMMON_FLAGS: dict[str, tuple[str, ...]] = {
    "build": ("--profile", "--workers"),
    "train": ("--pretrained-model", "--shards", "--output-dir", "--max-steps", "--resolution", "--token-weight",
              "--pixel-weight", "--mixed-precision", "--seed", "--report-to", "--validation-prompts"),
    "attention": ("--model", "--prompt", "--steps", "--resolution", "--seed"),
    "retrain": ("--base-model", "--steps"),
    "edit": ("--model", "--image", "--prompt", "--sampler.strength", "--sampler.steps", "--sampler.background"),
    "edit-bench": ("--root", "--limit", "--clip-checkpoint", "--dino"),
}


def parser_for(chosen: str | None) -> argparse.ArgumentParser:
    from tokencompose import __version__
    from tokencompose.cli.parsing import HumaneParser

    parser = HumaneParser(prog="tokencompose", description="Grounded COCO data for TokenCompose, and training with it.")
    parser.add_argument("--version", action="version", version=f"tokencompose {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=HumaneParser)
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_cli(subparsers)
            chosen_parser: Any = subparsers.choices[name]
            chosen_parser.examples = list(EXAMPLES.get(name, ()))
            chosen_parser.common_flags = set(COMMON_FLAGS.get(name, ()))
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
