"""`tokencompose models`: which weight files are present, which are missing, and where to get them."""
from __future__ import annotations

import argparse
import os

from tokencompose.schemas.config import BuildConfig
from tokencompose.tasks.weights import (DEFAULT_MODELS_DIR, ENV_MODELS_DIR, all_specs, describe_missing, find_weights,
                                        hf_cache_dir, models_dir, sha256_of, size_of, specs_for)

def _load_config(path: str | None, profile: str | None, models: str | None) -> BuildConfig | None:
    if path is None and profile is None:
        return None
    from tokencompose.schemas.settings_file import read_settings

    data: dict = read_settings(path) if path is not None else {}
    data.setdefault("source", {"images_dir": ".", "captions_json": "captions.json"})
    data.setdefault("output", {"out_dir": "out"})
    if profile is not None:
        data["profile"] = profile
    if models is not None:
        data.setdefault("models", {})["models_dir"] = models
    return BuildConfig.model_validate(data)


def run_cli(args: argparse.Namespace) -> int:
    config = _load_config(args.config, args.profile, args.models_dir)
    if config is None and args.models_dir:
        os.environ[ENV_MODELS_DIR] = args.models_dir
    root, cache = models_dir(config), hf_cache_dir(config)
    required = {s.key for s in specs_for(config)} if config is not None else None
    print(f"models folder: {root}" + ("" if root.is_dir() else " (does not exist)"))
    print(f"Hugging Face cache: {cache if cache else 'not used'}")
    missing_required = 0
    for spec in all_specs(config):
        searched: list[str] = []
        found = find_weights(spec, root, cache, searched)
        needed = "" if required is None else (" [required]" if spec.key in required else " [not needed]")
        if found is not None:
            line = f"  present  {spec.display_name}{needed}: {found} ({size_of(found):,} bytes)"
            expected = dict(spec.checksums).get(found.name)
            if args.verify and expected and found.is_file():
                actual = sha256_of(found)
                line += " sha256 ok" if actual == expected else f" SHA256 MISMATCH (expected {expected}, got {actual})"
            print(line)
        else:
            if required is not None and spec.key in required:
                missing_required += 1
            print(f"  MISSING  {spec.display_name}{needed}: {describe_missing(spec, searched, root)}")
    if required is not None:
        print("all weights for this configuration are present" if not missing_required
              else f"{missing_required} weight file(s) this configuration needs are missing")
    return 1 if missing_required else 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Register ``tokencompose models`` on an argparse subparsers object; the handler is ``args.handler``."""
    parser = subparsers.add_parser(
        "models", help="list the model weights that are present and missing",
        description="List every weight file the model backends use, where it was found or looked for, "
                    "and where to get it. With --config or --profile, exit 1 if one the configuration "
                    "needs is missing.")
    parser.add_argument("--config", help="a build configuration (JSON, YAML or TOML)")
    parser.add_argument("--profile", choices=("offline", "paper", "hybrid"), help="check this profile's backends")
    parser.add_argument("--models-dir", help=f"the models folder (default: ${ENV_MODELS_DIR} or {DEFAULT_MODELS_DIR})")
    parser.add_argument("--verify", action="store_true", help="check the sha256 of files that have one recorded")
    parser.set_defaults(handler=run_cli)
    return parser

