"""`tokencompose models registry`: list the trained models, show one (with its promotion gate's criteria),
check, repair, promote, roll back, gc.

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
    show = verbs.add_parser("show", help="one entry: what made it, how it measured, the promotion gate's criteria "
                            "and verdicts")
    show.add_argument("entry", help="the entry id")
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


def _gate_summary(entry) -> str:
    """'passed', 'failed: <criteria that failed>', or '-' for an entry without a gate decision."""
    if entry.gate is None:
        return "-"
    failed = [c.name for c in entry.gate.criteria if not c.passed]
    return f"failed: {','.join(failed)}" if failed else "passed"


def list_entries(registry, promoted: str | None) -> str:
    rows = [("id", "status", "created", "steps", "dataset", "multigen", "gate", "reason")]
    for entry in registry.entries():
        result = entry.multigen
        score = f"{result.metric} {result.value:.2f} vs {result.baseline_value:.2f}" if result else "-"
        dataset = f"v{entry.dataset_version}" if entry.dataset_version is not None else "-"
        rows.append((entry.id, _status(entry, promoted), entry.created, str(entry.steps), dataset, score,
                     _gate_summary(entry), entry.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    if len(rows) == 1:
        lines.append(f"(no entries in {registry.root})")
    return "\n".join(line.rstrip() for line in lines)


def show_entry(entry, promoted: str | None) -> str:
    """One entry in full: its fields, its MultiGen means and the gate's criteria as an aligned table."""
    from tokencompose.tasks.registry.promotion import GATE_COLUMNS, gate_rows, gate_settings_line

    dataset = f"{entry.dataset_dir} v{entry.dataset_version}" if entry.dataset_version is not None else \
        f"{entry.dataset_dir} (no version: trained again by the next run)"
    lines = [f"id: {entry.id}", f"status: {_status(entry, promoted)}", f"created: {entry.created}",
             f"pipeline: {entry.pipeline_dir or '-'}", f"trained from: {entry.parent or entry.base_model}",
             f"dataset: {dataset}, {len(entry.dataset_shards)} shards", f"steps: {entry.steps}",
             f"train config hash: {entry.train_config_hash}"]
    result = entry.multigen
    if result is not None:
        means = ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.scores.items()))
        lines.append(f"multigen: {result.metric} {result.value:.2f} vs {result.baseline_value:.2f} ({result.baseline})"
                     + (f"; {means}" if means else "") + (f"; report {result.report}" if result.report else ""))
    if entry.gate is None:
        lines.append("gate: not recorded (not evaluated, or written before the promotion gate)")
    else:
        lines += [f"gate: {'passed' if entry.gate.promote else 'failed'}", f"  {gate_settings_line(entry.gate.settings)}"]
        rows = [GATE_COLUMNS, *gate_rows(entry.gate)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(GATE_COLUMNS))]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines += [f"  {c.name}: {c.reason}" for c in entry.gate.criteria]
    lines.append(f"reason: {entry.reason}")
    return "\n".join(lines)


def _promoted_id(registry) -> str | None:
    from tokencompose.tasks.registry.store import RegistryError

    try:
        return registry.index().promoted
    except RegistryError:
        return None  # reported by the check; the entries are still worth showing


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
    elif action == "show":
        print(show_entry(registry.entry(args.entry), _promoted_id(registry)))
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
        print(list_entries(registry, _promoted_id(registry)))
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
