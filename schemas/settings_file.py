"""Reading a configuration file (JSON, YAML or TOML, by extension) into plain settings."""
from __future__ import annotations

import json
from pathlib import Path


def read_settings(path: str | Path) -> dict:
    """The file's top-level mapping; a parse error names the file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as error:  # each parser raises its own error type
        raise ValueError(f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, found {type(data).__name__}")
    return data
