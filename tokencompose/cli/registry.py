"""`tokencompose models registry`: list the trained models, check, repair, promote, roll back, gc.

Every verb checks the registry first and prints each problem as one line on stderr; an error is one
line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_REGISTRY = Path("registry")
DEFAULT_RUNS = Path("runs/retrain")


def add_registry_cli(models_parser: argparse.ArgumentParser) -> None:
    """``registry`` as an action of ``tokencompose models``."""
    actions = models_parser.add_subparsers(dest="models_action", metavar="ACTION")
    registry = actions.add_parser("registry", help="the registry of trained models: list, check, repair, promote, "
                                  "roll back, gc", description="The model registry written by retrain-tokencompose.")
    registry.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="the registry folder (default registry/)")
    verbs = registry.add_subparsers(dest="registry_action", metavar="VERB")
    verbs.add_parser("list", help="every entry, newest last (the default)")
    verbs.add_parser("check", help="report damaged, dangling and unknown entries and a broken promoted pointer; "
                     "exit 2 if there is any")
    verbs.add_parser("repair", help="rebuild the index from the valid entry files (damaged files go to damaged/)")
    promote = verbs.add_parser("promote", help="make an entry the promoted model")
    promote.add_argument("entry", help="the entry id")
    verbs.add_parser("rollback", help="promote again the entry promoted before the current one")
    gc = verbs.add_parser("gc", help="remove the runs folders of failed and interrupted retrains")
    gc.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="the retraining runs folder (RetrainConfig "
                    "runs_dir, default runs/retrain)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    registry.set_defaults(handler=run_registry)


def _status(entry, promoted: str | None) -> str:
    if entry.id == promoted:
        return "PROMOTED"
    if entry.status == "failed" and entry.reason.startswith("interrupted"):
        return "failed (interrupted)"
    return "retired" if entry.status == "promoted" else entry.status


def list_entries(registry, promoted: str | None) -> str:
    rows = [("id", "status", "created", "steps", "dataset", "multigen", "reason")]
    for entry in registry.entries():
        result = entry.multigen
        score = f"{result.metric} {result.value:.2f} vs {result.baseline_value:.2f}" if result else "-"
        dataset = f"v{entry.dataset_version}" if entry.dataset_version is not None else "-"
        rows.append((entry.id, _status(entry, promoted), entry.created, str(entry.steps), dataset, score,
                     entry.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    if len(rows) == 1:
        lines.append(f"(no entries in {registry.root})")
    return "\n".join(line.rstrip() for line in lines)


def _say(line: str) -> None:
    print(f"registry: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from tokencompose.tasks.registry.promotion import collect_runs
    from tokencompose.tasks.registry.store import ModelRegistry, RegistryError

    if not args.registry.is_dir():
        raise RegistryError(f"no registry at {args.registry} (not a folder); give the folder with --registry")
    registry = ModelRegistry(args.registry)
    action = args.registry_action or "list"
    problems = registry.check()
    for problem in problems:
        _say(str(problem))
    if action == "check":
        if problems:
            _say(f"{len(problems)} problem(s) in {registry.root}")
            return 2
        print(f"{registry.root}: {len(registry.entries())} entries, promoted {registry.index().promoted or 'none'}: "
              "no problems")
    elif action == "repair":
        for line in registry.repair():
            print(f"repair: {line}")
    elif action == "promote":
        entry = registry.promote(args.entry)
        print(f"promoted {entry.id} ({entry.pipeline_dir})")
    elif action == "rollback":
        entry = registry.rollback(on_skip=_say)
        print(f"rolled back: {entry.id} is promoted again ({entry.pipeline_dir})")
    elif action == "gc":
        for line in collect_runs(registry, args.runs, dry_run=args.dry_run):
            print(line)
    else:
        try:
            promoted = registry.index().promoted
        except RegistryError:
            promoted = None  # reported above; the entries are still worth listing
        print(list_entries(registry, promoted))
    return 0


def run_registry(args: argparse.Namespace) -> int:
    from tokencompose.tasks.registry.store import RegistryError

    try:
        return _run(args)
    except RegistryError as error:
        _say(str(error))
    except OSError as error:
        _say(f"{error.filename or args.registry}: {error.strerror or error}")
    return 2
