"""Fixtures of the flow tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tokencompose.tasks.multigen.toy import save_random_owlv2


@pytest.fixture(scope="module")
def tiny_owl(tiny_sd, tmp_path_factory) -> Path:
    return save_random_owlv2(tmp_path_factory.mktemp("owl") / "owlv2", tokenizer_dir=tiny_sd / "tokenizer")
