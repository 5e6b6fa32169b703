"""Help for people: a short --help per command with examples, --help-all with every field, human metavars,
every configuration field described, "did you mean" for typos and no prefix matching."""
from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from tokencompose.cli import COMMANDS, main
from tokencompose.schemas.config import BuildConfig
from tokencompose.schemas.evaluation import AttentionConfig, EvaluateConfig
from tokencompose.schemas.retrain import RetrainConfig
from tokencompose.schemas.training import TrainConfig

CONFIG_COMMANDS = ("build", "train", "evaluate", "attention", "retrain")
PYTHON_TYPES = re.compile(r"\b(Path|str|int|float|list\[|tuple\[)\b|\| None")


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from fields(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_the_default_help_is_short_with_examples_and_human_metavars(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"usage: tokencompose {command} [FLAGS]"
    assert len(lines) <= 92, len(lines)  # retrain: 91 with build's --dataset
    assert "common flags:" in out and f"tokencompose {command} --help-all" in out
    assert "examples:" in out
    metavars = " ".join(re.findall(r"^\s+--\S+ ([^\s,]+)", out, re.M))
    assert not PYTHON_TYPES.search(metavars), metavars


@pytest.mark.parametrize("command, model", [("build", BuildConfig), ("train", TrainConfig),
                                            ("evaluate", EvaluateConfig), ("attention", AttentionConfig),
                                            ("retrain", RetrainConfig)])
def test_help_all_lists_every_field_with_a_human_metavar(command, model, capsys):
    code, out, _ = run([command, "--help-all"], capsys)
    assert code == 0
    for dotted, _ in fields(model):
        assert f"--{dotted.replace('_', '-')}" in out, dotted
    metavars = " ".join(re.findall(r"^\s+--\S+ ([^\s,]+)", out, re.M))
    assert not PYTHON_TYPES.search(metavars), metavars


@pytest.mark.parametrize("model", [BuildConfig, TrainConfig, EvaluateConfig, AttentionConfig])
def test_every_configuration_field_is_described(model):
    assert [name for name, field in fields(model) if not field.description] == []


def test_a_mistyped_flag_gets_the_commands_usage_and_a_suggestion(capsys):
    code, _, err = run(["build", "--demo", "--shard-sise", "2"], capsys)
    assert code == 2
    assert err.splitlines()[0].startswith("usage: tokencompose build [FLAGS]")
    assert "unrecognized arguments: --shard-sise 2" in err and "did you mean --shard-size?" in err
    code, _, err = run(["build", "--output.shard-sise", "2"], capsys)
    assert "did you mean --output.shard-size" in err  # first: the closest of the flags (shard-seconds is next)


def test_a_prefix_of_a_flag_is_an_error_not_the_flag(capsys):
    code, _, err = run(["train", "--demo", "--max-step", "5"], capsys)
    assert code == 2 and "did you mean --max-steps?" in err


def test_a_mistyped_command_gets_a_suggestion(capsys):
    code, _, err = run(["biuld", "--demo"], capsys)
    assert code == 2 and "did you mean 'build'?" in err
    assert set(CONFIG_COMMANDS) <= set(COMMANDS)
