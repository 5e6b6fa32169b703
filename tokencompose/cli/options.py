"""Command-line flags generated from the pydantic configurations.

Every field of a configuration model becomes a flag through pydantic-settings' CLI source
(``--section.field-name``; booleans also take ``--no-section.field-name``), with the field's
description and default as its help, so the models stay the one place where options are defined.
A field may also declare a short flag in its schema (``json_schema_extra={"cli_shortcut": "out"}``).
Values are merged as: settings file < preset (e.g. ``--demo``) < flags.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator, Literal, TypeVar, cast

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource

SHORTCUT_PREFIX = "shortcut:"
Model = TypeVar("Model", bound=BaseModel)


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> CliSettingsSource:
    """Add one flag per field of ``model`` (nested models as ``--section.field``) and its shortcuts."""
    # Typed for BaseSettings, but the CLI source reads only the model's fields, so the configurations
    # stay plain models (the CLI tests pin the flags it makes from them).
    source: CliSettingsSource[Any] = CliSettingsSource(
        cast(type[BaseSettings], model), root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True,
        cli_avoid_json=True, cli_hide_none_type=True, cli_use_class_docs_for_groups=True, cli_parse_none_str="null")
    from tokencompose.cli.parsing import HumaneParser

    if isinstance(parser, HumaneParser):
        parser.has_config_fields = True
        parser.config_flags |= {"--" + dotted.replace("_", "-") for dotted, _ in _fields(model)}
    shortcuts = parser.add_argument_group("shortcuts")
    taken: set[str] = set()
    for dotted, field in _fields(model):
        name = (field.json_schema_extra or {}).get("cli_shortcut") if isinstance(field.json_schema_extra, dict) else None
        if not name or name in taken:  # a section met twice (retrain: build.models, evaluation.models): the first
            continue
        taken.add(name)
        kwargs: dict[str, Any] = {"dest": SHORTCUT_PREFIX + dotted, "default": None, "metavar": _metavar(field),
                                  "help": _shortcut_help(dotted, field)}
        if field.annotation is bool:
            kwargs.update(action="store_const", const=True)
            kwargs.pop("metavar")
        elif _is_list(field.annotation):
            kwargs["action"] = "append"
        shortcuts.add_argument(f"--{name}", **kwargs)
    return source


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _shortcut_help(dotted: str, field: Any) -> str:
    flag = "--" + dotted.replace("_", "-")
    return f"{field.description} (= {flag})" if field.description else f"same as {flag}"


def _metavar(field: Any) -> str:
    """PATH, N, X, TEXT or the choices, from the field's type (a list shortcut is repeated: one item each)."""
    from tokencompose.cli.parsing import human_metavar

    annotation = field.annotation
    if _is_list(annotation):
        annotation = annotation.__args__[0]
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if len(args) == 1:           # X | None
        annotation = args[0]
    return human_metavar(getattr(annotation, "__name__", str(annotation)))


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) in (list, tuple)


def given_values(source: CliSettingsSource, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration values the user typed, as a nested dict (shortcuts included)."""
    values = source(parsed_args=_without_shortcuts(args))()
    for key, value in vars(args).items():
        if key.startswith(SHORTCUT_PREFIX) and value is not None:
            set_dotted(values, key[len(SHORTCUT_PREFIX):], value)
    return values


def _without_shortcuts(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith(SHORTCUT_PREFIX)})


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def merged(*layers: dict) -> dict:
    """Deep merge: later layers win, nested sections merge key by key."""
    result: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def explain(error: ValidationError, what: str = "configuration") -> str:
    lines = [f"  - {'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in error.errors()]
    return f"invalid {what}:\n" + "\n".join(lines)


def config_from_args(model: type[Model], args: argparse.Namespace, *presets: dict) -> Model:
    """The configuration from the --config file, then ``presets``, then the flags (raises pydantic's
    ValidationError, or OSError / ValueError for a --config file that cannot be read)."""
    return model.model_validate(merged(read_settings_file(args.config), *presets,
                                       given_values(args.config_source, args)))


def load_config(model: type[Model], args: argparse.Namespace, what: str, *presets: dict) -> Model | None:
    """:func:`config_from_args`, or None after printing one clear message when the configuration cannot
    be read or is invalid (the caller exits 2). Every command reads its configuration here."""
    import sys

    try:
        return config_from_args(model, args, *presets)
    except ValidationError as error:
        print(explain(error, what), file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"cannot read --config: {error}", file=sys.stderr)
    return None


def read_settings_file(path: str | Path | None) -> dict:
    """A --config file's settings (JSON, YAML or TOML), {} without one."""
    from tokencompose.schemas.settings_file import read_settings

    return read_settings(path) if path else {}
