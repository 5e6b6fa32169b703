"""Offline settings for every test, and fixtures over tests/testkit.py."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
from testkit import SourceBuilder, demo_config


@pytest.fixture
def make_demo_config(tmp_path):
    def make(name: str = "out", **overrides):
        return demo_config(tmp_path / name, **overrides)
    return make


@pytest.fixture
def source_builder(tmp_path) -> SourceBuilder:
    return SourceBuilder(tmp_path / "source")
