"""What can be checked about a build configuration before anything starts: no model is loaded, no
source is parsed and no Prefect server is started, so a wrong path or an output folder that cannot be
written answers in a second."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tokencompose.schemas.config import BuildConfig


def output_problems(folder: Path, field: str) -> list[str]:
    """Whether a command can write its output folder, found by trying (permission bits say nothing
    for root, and nothing about a read-only mount): a probe file in the folder, or a probe folder in
    its nearest existing ancestor when the folder is still to be made. One line naming the field."""
    folder = Path(folder).expanduser()
    existing = folder
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        is_folder = existing.is_dir()
    except OSError as error:           # a folder on the way that may not be looked into
        return [f"{field}: {folder} cannot be checked ({(error.strerror or str(error)).lower()})"]
    if not is_folder:
        where = "exists and is not a folder" if existing == folder else f"cannot be made: {existing} is not a folder"
        return [f"{field}: {folder} {where}"]
    try:
        if existing == folder:
            descriptor, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
            os.close(descriptor)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=existing))
    except OSError as error:
        reason = "read-only file system" if error.errno == errno.EROFS else (error.strerror or str(error)).lower()
        what = "is not writable" if existing == folder else f"cannot be made in {existing}"
        return [f"{field}: {folder} {what} ({reason})"]
    return []


def _path_problems(config: BuildConfig) -> list[str]:
    source = config.source
    problems = []
    if source.dataset:
        from tokencompose.tasks.source.streams import dataset_problems

        problems += dataset_problems(config)
    elif source.images_dir is not None and not source.images_dir.is_dir():
        what = "does not exist" if not source.images_dir.exists() else "is not a folder"
        problems.append(f"source.images_dir: {source.images_dir} {what}")
    files: list[tuple[str, Path | None]] = [("source.captions_json", source.captions_json),
                                            ("source.instances_json", source.instances_json)]
    files += [(f"selection.vsr_files[{i}]", path) for i, path in enumerate(config.selection.vsr_files)]
    if config.grounding.noun_table is not None:
        files.append(("grounding.noun_table", config.grounding.noun_table))
    if config.selection.keys_file is not None:
        files.append(("selection.keys_file", config.selection.keys_file))
    if config.selection.exclude_flagged is not None:
        files.append(("selection.exclude_flagged", config.selection.exclude_flagged))
    for field, path in files:
        if path is not None and not path.is_file():
            problems.append(f"{field}: {path} {'does not exist' if not path.exists() else 'is not a file'}")
    if config.selection.exclude_flagged is not None and config.selection.exclude_flagged.is_file():
        problems += flags_file_problems("selection.exclude_flagged", config.selection.exclude_flagged)
    return problems


def flags_file_problems(field: str, path: Path) -> list[str]:
    """A flags file (schemas/curation.py) that does not read as one: its file and line named."""
    from tokencompose.schemas.curation import CurationFileError, read_exclusions

    try:
        read_exclusions(path)
    except CurationFileError as error:
        return [f"{field}: {error}"]
    return []


def build_problems(config: BuildConfig) -> list[str]:
    """Every problem that stops a build before work: missing inputs, an output folder that cannot
    take this dataset, missing packages or weights of the chosen backends. Empty when it can start."""
    from tokencompose.tasks.models import backends
    from tokencompose.tasks.shards.output import ConfigurationError, busy_problem, check_output

    problems = _path_problems(config)
    unwritable = output_problems(config.output.out_dir, "output.out_dir")
    busy = None if unwritable else busy_problem(config.output.out_dir)
    if busy:
        return problems + [busy]
    try:
        if not unwritable:
            check_output(config, config.config_hash())
    except ConfigurationError as error:
        problems.append(str(error))
    return problems + unwritable + backends.preflight(config)


def train_problems(config) -> list[str]:
    """What stops a training run before any model loads: the model folder and the shard patterns."""
    from tokencompose.tasks.models.weights import check_training_folder
    from tokencompose.tasks.shards.patterns import expand_shards

    problems = []
    for check, value in ((check_training_folder, config.pretrained_model), (expand_shards, config.shards)):
        try:
            check(value)
        except FileNotFoundError as error:
            problems.append(str(error))
    if config.exclude_flagged is not None:
        problems += (flags_file_problems("exclude_flagged", config.exclude_flagged) if config.exclude_flagged.is_file()
                     else [f"exclude_flagged: {config.exclude_flagged} does not exist"])
    return problems + output_problems(Path(config.output_dir), "output_dir")


def evaluate_problems(config) -> list[str]:
    """What stops an evaluation before anything is imported: its output folder. (The full check, of
    prompts, models and detector, is the evaluation's own preflight, which loads tokenizers.)"""
    return output_problems(Path(config.out_dir), "out_dir")
