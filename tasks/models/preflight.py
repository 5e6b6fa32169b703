"""What can be checked about a build configuration before anything starts: no model is loaded, no
source is parsed and no Prefect server is started, so a wrong path answers in a second."""
from __future__ import annotations

from pathlib import Path

from tokencompose.schemas.config import BuildConfig


def _path_problems(config: BuildConfig) -> list[str]:
    source = config.source
    problems = []
    if not source.images_dir.is_dir():
        what = "does not exist" if not source.images_dir.exists() else "is not a folder"
        problems.append(f"source.images_dir: {source.images_dir} {what}")
    files: list[tuple[str, Path | None]] = [("source.captions_json", source.captions_json),
                                            ("source.instances_json", source.instances_json)]
    files += [(f"selection.vsr_files[{i}]", path) for i, path in enumerate(config.selection.vsr_files)]
    if config.grounding.noun_table is not None:
        files.append(("grounding.noun_table", config.grounding.noun_table))
    if config.selection.keys_file is not None:
        files.append(("selection.keys_file", config.selection.keys_file))
    for field, path in files:
        if path is not None and not path.is_file():
            problems.append(f"{field}: {path} {'does not exist' if not path.exists() else 'is not a file'}")
    return problems


def build_problems(config: BuildConfig) -> list[str]:
    """Every problem that stops a build before work: missing inputs, an output folder that cannot
    take this dataset, missing packages or weights of the chosen backends. Empty when it can start."""
    from tokencompose.tasks.models import backends
    from tokencompose.tasks.shards.dataset import ConfigurationError, check_output

    problems = _path_problems(config)
    try:
        check_output(config, config.config_hash())
    except ConfigurationError as error:
        problems.append(str(error))
    return problems + backends.preflight(config)


def train_problems(config) -> list[str]:
    """What stops a training run before any model loads: the model folder and the shard patterns."""
    from tokencompose.tasks.training.components import check_folder
    from tokencompose.tasks.training.data import expand_shards

    problems = []
    for check, value in ((check_folder, config.pretrained_model), (expand_shards, config.shards)):
        try:
            check(value)
        except FileNotFoundError as error:
            problems.append(str(error))
    output = Path(config.output_dir)
    if output.exists() and not output.is_dir():
        problems.append(f"output_dir: {output} exists and is not a folder")
    return problems
