"""`tokencompose edit` (one image, Blended Latent Diffusion) and `tokencompose edit-bench` (PIE-Bench)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokencompose.cli.options import add_config_flags, load_config
from tokencompose.schemas.editing import EditConfig, PieBenchConfig
from tokencompose.schemas.runner import RunnerError


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit", help="edit a region of an image with a (grounded) model: Blended Latent Diffusion",
        description="Blended Latent Diffusion with a local Stable Diffusion folder or registry entry: the region "
                    "given by --mask-file, --mask.shard/--mask.sample-key/--mask.noun (a grounded shard's noun) "
                    "or --mask-word (the model's own cross-attention for a word of the source prompt) is redrawn "
                    "to show --prompt, the rest is kept. Writes source, mask, result (and --attention-word grids) "
                    "to --out. Runs on --runner-kind / --dask-address / --ray-address like evaluate. See docs/editing.md.")
    _common(parser, EditConfig, "EditConfig")
    parser.set_defaults(handler=run_edit)


def add_bench_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "edit-bench", help="PIE-Bench: edit its 700 images with each model and score them",
        description="Edit every PIE-Bench item with each --model (Blended Latent Diffusion, the item's mask and "
                    "editing prompt) and score structure distance, background PSNR/LPIPS/MSE/SSIM and CLIP "
                    "similarity as PIE-Bench does; report.md puts the models side by side with the seed report's "
                    "Table 2. A Dask or Ray cluster (--dask-address, --ray-address) spreads the edits over its GPUs. "
                    "See docs/editing.md for the data and the local weights it needs.")
    _common(parser, PieBenchConfig, "PieBenchConfig")
    parser.set_defaults(handler=run_bench)


def _common(parser, model, name: str) -> None:
    parser.add_argument("--config", type=Path, help=f"a JSON, YAML or TOML file with {name} fields")
    parser.add_argument("--no-prefect", action="store_true", help="run in this process, without Prefect")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(config_source=add_config_flags(parser, model))


def _run(args, model, what: str, direct, preflight, on_runner: str) -> int:
    config = load_config(model, args, what)
    if config is None:
        return 2
    if args.print_config:
        print(config.model_dump_json(indent=1))
        return 0
    import logging

    from tokencompose.tasks.multigen.generation import ModelFolderError
    from tokencompose.tasks.multigen.run import EvaluationError
    from tokencompose.tasks.progress import set_quiet

    if args.quiet:
        set_quiet()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.no_prefect:
            out = direct(config)
        else:
            preflight(config)   # a run that cannot start is told once, before Prefect logs a failed flow run
            from tokencompose.flows import edit as flows

            out = getattr(flows, on_runner)(config)  # on config.runner: threads, Dask or Ray
    except (EvaluationError, ModelFolderError, ValueError) as error:
        print(str(error).splitlines()[0], file=sys.stderr)
        return 2
    except RunnerError as error:
        print(f"cannot start on {config.runner.describe()}: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(out)}, indent=1))
    return 0


def run_edit(args: argparse.Namespace) -> int:
    from tokencompose.tasks.editing.run import check_edit, edit_image

    return _run(args, EditConfig, "edit configuration", edit_image, check_edit, "edit_on_runner")


def run_bench(args: argparse.Namespace) -> int:
    from tokencompose.tasks.editing.run import plan_pie_bench, run_pie_bench

    return _run(args, PieBenchConfig, "PIE-Bench configuration", run_pie_bench, plan_pie_bench, "pie_bench_on_runner")
