"""`tokencompose models registry`: list the trained models, promote one, roll back."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REGISTRY = Path("registry")


def add_registry_cli(models_parser: argparse.ArgumentParser) -> None:
    """``registry`` as an action of ``tokencompose models``."""
    actions = models_parser.add_subparsers(dest="models_action", metavar="ACTION")
    registry = actions.add_parser("registry", help="list the registry of trained models; promote; roll back",
                                  description="The model registry written by retrain-tokencompose.")
    registry.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="the registry folder (default registry/)")
    verbs = registry.add_subparsers(dest="registry_action", metavar="VERB")
    verbs.add_parser("list", help="every entry, newest last (the default)")
    promote = verbs.add_parser("promote", help="make an entry the promoted model")
    promote.add_argument("entry", help="the entry id")
    verbs.add_parser("rollback", help="promote again the entry promoted before the current one")
    registry.set_defaults(handler=run_registry)


def _status(entry, promoted: str | None) -> str:
    if entry.id == promoted:
        return "PROMOTED"
    return "retired" if entry.status == "promoted" else entry.status


def list_entries(registry) -> str:
    index = registry.index()
    rows = [("id", "status", "created", "steps", "dataset", "multigen", "reason")]
    for entry in registry.entries():
        result = entry.multigen
        score = f"{result.metric} {result.value:.2f} vs {result.baseline_value:.2f}" if result else "-"
        dataset = f"v{entry.dataset_version}" if entry.dataset_version is not None else "-"
        rows.append((entry.id, _status(entry, index.promoted), entry.created, str(entry.steps), dataset, score,
                     entry.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    if len(rows) == 1:
        lines.append(f"(no entries in {registry.root})")
    return "\n".join(line.rstrip() for line in lines)


def run_registry(args: argparse.Namespace) -> int:
    from tokencompose.tasks.registry.store import ModelRegistry, RegistryError

    try:
        registry = ModelRegistry(args.registry)
        action = args.registry_action or "list"
        if action == "promote":
            entry = registry.promote(args.entry)
            print(f"promoted {entry.id} ({entry.pipeline_dir})")
        elif action == "rollback":
            entry = registry.rollback()
            print(f"rolled back: {entry.id} is promoted again ({entry.pipeline_dir})")
        else:
            print(list_entries(registry))
    except RegistryError as error:
        print(f"registry: {error}", file=sys.stderr)
        return 2
    return 0
