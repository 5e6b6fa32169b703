"""`tokencompose models`: which weight files are present, which are missing, and where to get them."""
from __future__ import annotations

import argparse
import os

from tokencompose.cli.options import merged, read_settings_file
from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.models.weights import (DEFAULT_MODELS_DIR, ENV_MODELS_DIR, all_specs, describe_missing,
                                               find_weights, hf_cache_dir, models_dir, size_of, specs_for)
from tokencompose.tasks.shards.shard_io import file_sha256

# What a build configuration must name that listing weights does not use.
UNUSED_SECTIONS = {"source": {"images_dir": ".", "captions_json": "captions.json"}, "output": {"out_dir": "out"}}


def _load_config(path: str | None, profile: str | None, models: str | None) -> BuildConfig | None:
    if path is None and profile is None:
        return None
    settings = read_settings_file(path)
    flags: dict = {**({"profile": profile} if profile is not None else {}),
                   **({"models": {"models_dir": models}} if models is not None else {})}
    return BuildConfig.model_validate(merged({k: v for k, v in UNUSED_SECTIONS.items() if k not in settings},
                                             settings, flags))


def _row(spec, found, verify: bool, needed: bool) -> list[str]:
    name = spec.display_name
    if found is None:
        status = "MISSING" if needed else "missing"
        lines = [f"  {status:8} {name:48} {spec.what}"]
    else:
        lines = [f"  {'present':8} {name:48} {size_of(found):,} bytes at {found}"]
        expected = dict(spec.checksums).get(found.name)
        if verify and expected and found.is_file():
            lines[0] += " sha256 ok" if file_sha256(found) == expected else " SHA256 MISMATCH"
    return lines


def run_cli(args: argparse.Namespace) -> int:
    config = _load_config(args.config, args.profile, args.models_dir)
    if config is None and args.models_dir:
        os.environ[ENV_MODELS_DIR] = args.models_dir
    root, cache = models_dir(config), hf_cache_dir(config)
    needed_keys = [s.key for s in specs_for(config)] if config is not None else []
    print(f"models folder: {root}" + ("" if root.is_dir() else " (does not exist)"))
    print(f"Hugging Face cache: {cache if cache else 'not used'}")
    specs = all_specs(config)
    groups = [(f"weights the {config.profile} profile needs:" if config else None,
               [s for s in specs if s.key in needed_keys]),
              ("other weights tokencompose knows:" if config else "weights tokencompose knows:",
               [s for s in specs if s.key not in needed_keys])]
    missing_needed = 0
    for title, members in groups:
        if title is None or (not members and config is not None and title.startswith("weights the")):
            if title is not None:
                print(f"{title} none (the offline backends need no weights)")
            continue
        print(title)
        for spec in members:
            searched: list[str] = []
            found = find_weights(spec, root, cache, searched)
            needed = spec.key in needed_keys
            missing_needed += int(found is None and needed)
            for line in _row(spec, found, args.verify, needed):
                print(line)
            if found is None and args.verbose:
                print(f"           {describe_missing(spec, searched, root)}")
    if config is not None:
        if missing_needed:
            print(f"{missing_needed} weight file(s) this configuration needs are missing; add -v to see where each "
                  "was looked for and where to get it")
        else:
            print("all weights for this configuration are present")
    elif not args.verbose:
        print("(add --profile paper to check one profile's needs, -v for where each missing file was looked for)")
    return 1 if missing_needed else 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``tokencompose models`` on an argparse subparsers object; the handler is ``args.handler``."""
    parser = subparsers.add_parser(
        "models", help="list the model weights that are present and missing; the model registry",
        description="List the weight files the model backends use: the chosen profile's first, present or missing. "
                    "With --config or --profile, exit 1 if one the configuration needs is missing. "
                    "`tokencompose models registry` lists the registry of trained models.")
    parser.add_argument("--config", help="a build configuration (JSON, YAML or TOML)")
    parser.add_argument("--profile", choices=("offline", "paper", "hybrid"), help="check this profile's backends")
    parser.add_argument("--models-dir", help=f"the models folder (default: ${ENV_MODELS_DIR} or {DEFAULT_MODELS_DIR})")
    parser.add_argument("--verify", action="store_true", help="check the sha256 of files that have one recorded")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="for each missing file: every place looked in and where to get it")
    parser.set_defaults(handler=run_cli)
    from tokencompose.cli.registry import add_registry_cli

    add_registry_cli(parser)
    return parser
