"""The model registry: entries, promotion, rollback, crash safety, format refusal, and its CLI (the gate's
decisions: test_promotion_gate.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokencompose.cli import parser_for
from tokencompose.schemas.registry import MultiGenResult, RegistryEntry, Status
from tokencompose.tasks.registry import store as registry_module
from tokencompose.tasks.registry.store import ModelRegistry, RegistryError


def pipeline(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return folder


def entry(tmp_path: Path, entry_id: str, status: Status = "candidate", created: str = "2026-11-30T00:00:00+00:00",
          model: Path | None | str = "auto") -> RegistryEntry:
    folder = pipeline(tmp_path, entry_id) if model == "auto" else None if model is None else Path(model)
    return RegistryEntry(id=entry_id, status=status, created=created, pipeline_dir=folder,
                         base_model=tmp_path / "sd", dataset_dir=tmp_path / "data", dataset_version=1,
                         train_config_hash="abc", steps=10, reason="test")


def test_register_promote_and_roll_back(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    assert reg.promoted() is None and reg.entries() == []
    reg.register(entry(tmp_path, "a", "promoted", "2026-11-30T01:00:00+00:00"))
    reg.register(entry(tmp_path, "b", "rejected", "2026-11-30T02:00:00+00:00"))
    reg.register(entry(tmp_path, "c", "promoted", "2026-11-30T03:00:00+00:00"))
    assert reg.promoted().id == "c" and reg.entry("a").status == "retired" and reg.entry("b").status == "rejected"
    assert [e.id for e in reg.entries()] == ["a", "b", "c"]
    assert reg.rollback().id == "a" and reg.promoted().id == "a" and reg.entry("c").status == "retired"
    with pytest.raises(RegistryError, match="no earlier promoted entry"):
        reg.rollback()
    reg.promote("b")
    assert reg.promoted().id == "b"
    actions = [(e.action, e.entry) for e in reg.index().history]
    assert actions == [("register", "a"), ("promote", "a"), ("reject", "b"), ("register", "c"), ("promote", "c"),
                       ("rollback", "a"), ("promote", "b")]


def test_failed_or_missing_models_are_never_promoted(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    reg.register(entry(tmp_path, "broken", "failed", model=None))
    with pytest.raises(RegistryError, match="failed"):
        reg.promote("broken")
    gone = entry(tmp_path, "gone")
    reg.register(gone)
    (Path(gone.pipeline_dir) / "model_index.json").unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.promote("gone")
    with pytest.raises(RegistryError, match="no registry entry"):
        reg.promote("nope")
    with pytest.raises(RegistryError, match="not a registry entry id"):
        reg.promote("../escape")
    assert reg.promoted() is None


def test_a_crash_at_any_write_leaves_a_complete_promoted_entry(tmp_path, monkeypatch):
    """Stop the process at every file write of a promotion in turn: the index always names a
    complete entry, either the old promoted one or the new one."""
    real_write = registry_module.write_atomic
    writes_in_a_promotion = 5            # new entry, index (register), old entry, new entry, index (promote)
    for crash_at in range(writes_in_a_promotion):
        root = tmp_path / f"run{crash_at}" / "registry"
        reg = ModelRegistry(root)
        reg.register(entry(tmp_path / f"run{crash_at}", "old", "promoted"))
        calls = {"n": 0}

        def crashing(path, data, crash_at=crash_at, calls=calls):
            if calls["n"] == crash_at:
                raise KeyboardInterrupt("simulated crash")
            calls["n"] += 1
            real_write(path, data)

        monkeypatch.setattr(registry_module, "write_atomic", crashing)
        with pytest.raises(KeyboardInterrupt):
            reg.register(entry(tmp_path / f"run{crash_at}", "new", "promoted", "2026-12-01T00:00:00+00:00"))
        monkeypatch.setattr(registry_module, "write_atomic", real_write)
        after = ModelRegistry(root)
        promoted = after.promoted()
        assert promoted.id in ("old", "new") and (Path(promoted.pipeline_dir) / "model_index.json").is_file()


def test_a_registry_from_a_newer_format_is_refused(tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    (root / "registry.json").write_text(json.dumps({"format": 99, "promoted": None, "history": []}))
    with pytest.raises(RegistryError, match="format 99"):
        ModelRegistry(root)
    (root / "registry.json").write_text("{not json")
    damaged = ModelRegistry(root)          # a damaged index is for check and repair, not a refusal
    with pytest.raises(RegistryError, match="registry.json: not valid JSON"):
        damaged.index()


def test_cli_lists_promotes_and_rolls_back(tmp_path, capsys):
    reg = ModelRegistry(tmp_path / "registry")
    first = entry(tmp_path, "first", "promoted", "2026-11-30T01:00:00+00:00")
    second = entry(tmp_path, "second", "rejected", "2026-11-30T02:00:00+00:00").model_copy(update={
        "multigen": MultiGenResult(metric="MG3", value=48.0, baseline="first", baseline_value=50.0)})
    reg.register(first)
    reg.register(second)

    def run(*argv):
        args = parser_for("models").parse_args(["models", "registry", "--registry", str(tmp_path / "registry"),
                                                *argv])
        code = args.handler(args)
        return code, capsys.readouterr()

    code, out = run()
    assert code == 0
    rows = {line.split()[0]: line for line in out.out.splitlines()[1:]}
    assert "PROMOTED" in rows["first"] and "rejected" in rows["second"] and "MG3 48.00 vs 50.00" in rows["second"]
    assert run("promote", "second")[0] == 0 and ModelRegistry(tmp_path / "registry").promoted().id == "second"
    assert run("rollback")[0] == 0 and ModelRegistry(tmp_path / "registry").promoted().id == "first"
    code, out = run("promote", "missing")
    assert code == 2 and "no registry entry 'missing'" in out.err


def test_an_entry_whose_rates_are_nan_reads_back(tmp_path):
    """A candidate whose every image was NaN has NaN MultiGen means: the entry must still load (JSON null did not)."""
    import math

    registry = ModelRegistry(tmp_path / "registry")
    nan = float("nan")
    result = MultiGenResult(metric="MG3", value=nan, baseline="base", baseline_value=40.0, scores={"MG3": nan})
    registry.register(entry(tmp_path, "e1", status="rejected").model_copy(update={"multigen": result}))
    loaded = ModelRegistry(tmp_path / "registry").entry("e1")
    assert math.isnan(loaded.multigen.value) and math.isnan(loaded.multigen.scores["MG3"])
    assert loaded.multigen.baseline_value == 40.0
