"""A registry edited, truncated or lost by hand: `check` names every problem in one line, `promote` and
`rollback` still work when a valid target exists, `repair` leaves a registry `check` passes, every error
is one line with exit code 2, runs folders of killed retrains are registered and collected; and
hypothesis-generated damage to the entry files and the index never gives a traceback nor touches a
model's files."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokencompose.cli import main
from tokencompose.schemas.registry import RegistryEntry, Status
from tokencompose.tasks.registry.promotion import collect_runs, register_interrupted, running
from tokencompose.tasks.registry.store import ModelRegistry

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BIN = Path(sys.executable).parent


def make_entry(root: Path, entry_id: str, status: Status, created: str, with_model: bool = True) -> RegistryEntry:
    folder = None
    if with_model:
        folder = root / "models" / entry_id
        folder.mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "id": entry_id}))
        (folder / "unet.bin").write_bytes(hashlib.sha256(entry_id.encode()).digest() * 64)
    return RegistryEntry(id=entry_id, status=status, created=created, pipeline_dir=folder, base_model=root / "sd",
                         dataset_dir=root / "data", dataset_version=1, train_config_hash="abc", steps=10, reason="test")


def populated(root: Path) -> ModelRegistry:
    """a promoted then replaced by c, b rejected, d failed, e a candidate: history a, b, c, d, e."""
    reg = ModelRegistry(root / "registry")
    reg.register(make_entry(root, "a", "promoted", "2026-11-30T01:00:00+00:00"))
    reg.register(make_entry(root, "b", "rejected", "2026-11-30T02:00:00+00:00"))
    reg.register(make_entry(root, "c", "promoted", "2026-11-30T03:00:00+00:00"))
    reg.register(make_entry(root, "d", "failed", "2026-11-30T04:00:00+00:00", with_model=False))
    reg.register(make_entry(root, "e", "candidate", "2026-11-30T05:00:00+00:00"))
    return reg


def model_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "models").rglob("*")) if p.is_file()}


def cli(registry: Path, *argv: str, capsys) -> tuple[int, list[str], str]:
    code = main(["models", "registry", "--registry", str(registry), *argv])
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


# ---------------------------------------------------------------- each hole of issue 20, one test each
def test_a_promoted_entry_whose_file_is_gone_is_reported_and_promote_and_rollback_still_work(tmp_path, capsys):
    reg = populated(tmp_path)
    (reg.root / "entries" / "c.json").unlink()
    code, err, _ = cli(reg.root, "check", capsys=capsys)
    assert code == 2 and err[0] == (f"registry: dangling: {reg.root}/entries/c.json: the file of the promoted entry c "
                                    "is gone; `tokencompose models registry repair` rebuilds the index from the entry "
                                    "files") and len(err) == 2
    code, err, out = cli(reg.root, "list", capsys=capsys)
    assert code == 0 and "dangling" in err[0] and "PROMOTED" not in out
    code, err, out = cli(reg.root, "rollback", capsys=capsys)
    assert code == 0 and out.startswith("rolled back: a is promoted again")
    assert reg.promoted().id == "a"
    code, err, out = cli(reg.root, "promote", "e", capsys=capsys)
    assert code == 0 and reg.promoted().id == "e"


def test_an_index_naming_an_unknown_id_is_reported_and_promote_still_works(tmp_path, capsys):
    reg = populated(tmp_path)
    index = json.loads((reg.root / "registry.json").read_text())
    index["promoted"] = "zzz"
    (reg.root / "registry.json").write_text(json.dumps(index))
    code, err, _ = cli(reg.root, "check", capsys=capsys)
    assert code == 2 and err == [f"registry: unknown: {reg.root}/registry.json: names the promoted entry zzz, which was "
                                 "never registered; `tokencompose models registry repair` rebuilds the index from the "
                                 "entry files", f"registry: 1 problem(s) in {reg.root}"]
    assert cli(reg.root, "promote", "b", capsys=capsys)[0] == 0 and reg.promoted().id == "b"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "b", "status": "lost", "created": "x"}), "not a valid registry entry: status: Input should be"),
    (json.dumps({"id": "other"}), "not a valid registry entry"),
    ("[]", "not a valid registry entry: "),
])
def test_a_corrupt_entry_file_is_one_line_never_a_traceback(tmp_path, capsys, content, message):
    reg = populated(tmp_path)
    (reg.root / "entries" / "b.json").write_text(content)
    code, err, out = cli(reg.root, "check", capsys=capsys)
    assert code == 2 and len(err) == 2 and err[0].startswith(f"registry: corrupt: {reg.root}/entries/b.json: ")
    assert message in err[0]
    code, err, out = cli(reg.root, "promote", "b", capsys=capsys)
    assert code == 2 and err[-1].startswith(f"registry: cannot promote: {reg.root}/entries/b.json: ") and len(err) == 2
    assert reg.promoted().id == "c"


@pytest.mark.parametrize("field, value, message", [
    ("promoted", 5, "promoted: Input should be a valid string"),
    ("promoted", "../../etc/passwd", "is not a registry entry id"),
    ("history", {"a": 1}, "history: Input should be a valid array"),
    ("format", "one", "format: Input should be a valid integer"),
])
def test_a_bad_index_field_is_one_line_with_exit_2(tmp_path, capsys, field, value, message):
    reg = populated(tmp_path)
    index = json.loads((reg.root / "registry.json").read_text())
    index[field] = value
    (reg.root / "registry.json").write_text(json.dumps(index))
    for verb in ("check", "rollback"):
        code, err, _ = cli(reg.root, verb, capsys=capsys)
        assert code == 2 and all(line.startswith("registry: ") for line in err)
        assert err[0].startswith(f"registry: corrupt: {reg.root}/registry.json: not a valid registry index: ")
        assert message in err[0]


@pytest.mark.parametrize("entry_id", ["x" * 5000, "../escape", "a/b", ".hidden", "", "tab\there", "é"])
def test_an_absurd_or_path_like_id_is_one_line_with_exit_2(tmp_path, capsys, entry_id):
    reg = populated(tmp_path)
    code, err, _ = cli(reg.root, "promote", entry_id, capsys=capsys)
    assert code == 2 and len(err) == 1 and "is not a registry entry id" in err[0] and len(err[0]) < 200


def test_a_missing_registry_folder_or_a_file_in_its_place_is_one_line(tmp_path, capsys):
    for verb in ("list", "check", "repair", "rollback"):
        code, err, _ = cli(tmp_path / "nowhere", verb, capsys=capsys)
        assert code == 2 and err == [f"registry: no registry at {tmp_path}/nowhere (not a folder); give the folder "
                                     "with --registry"]
    (tmp_path / "file").write_text("x")
    assert cli(tmp_path / "file", "check", capsys=capsys)[0] == 2


def test_repair_keeps_the_newest_valid_promoted_entry_and_records_the_decision(tmp_path, capsys):
    reg = populated(tmp_path)
    digests = model_digests(tmp_path)
    (reg.root / "registry.json").write_text('{"format": 1, "promoted": "c", "hist')   # truncated index
    (reg.root / "entries" / "b.json").write_text("\x00\x01garbage")
    code, err, _ = cli(reg.root, "check", capsys=capsys)
    assert code == 2 and len(err) == 3
    code, err, out = cli(reg.root, "repair", capsys=capsys)
    assert code == 0
    assert out.splitlines()[0] == "repair: promoted: c (the index is unreadable; newest valid entry with status promoted)"
    assert "moved damaged b.json to damaged/b.json." in out and "moved the damaged index to damaged/" in out
    assert cli(reg.root, "check", capsys=capsys)[0] == 0
    index = ModelRegistry(reg.root).index()
    assert index.promoted == "c" and index.history[-1].action == "repair" and "b.json" in index.history[-1].detail
    assert sorted(p.name.split(".")[0] for p in (reg.root / "damaged").iterdir()) == ["b", "registry"]
    assert model_digests(tmp_path) == digests


def test_repair_falls_back_on_the_promotion_stack_when_the_promoted_model_is_gone(tmp_path, capsys):
    reg = populated(tmp_path)
    entry = json.loads((reg.root / "entries" / "c.json").read_text())
    entry["pipeline_dir"] = str(tmp_path / "deleted-model")
    (reg.root / "entries" / "c.json").write_text(json.dumps(entry))
    code, err, _ = cli(reg.root, "check", capsys=capsys)
    assert code == 2 and err[0].startswith(f"registry: broken promoted: {reg.root}/registry.json: promoted entry c "
                                           "cannot serve: entry c's pipeline folder")
    assert cli(reg.root, "repair", capsys=capsys)[0] == 0
    assert reg.promoted().id == "a" and cli(reg.root, "check", capsys=capsys)[0] == 0


def test_rollback_skips_a_broken_entry_in_the_promotion_stack_and_says_so(tmp_path, capsys):
    reg = populated(tmp_path)
    reg.promote("e")                       # stack a, c, e
    shutil.rmtree(tmp_path / "models" / "c")
    code, err, out = cli(reg.root, "rollback", capsys=capsys)
    assert code == 0 and err == [f"registry: skipped c: entry c's pipeline folder {tmp_path}/models/c is missing"]
    assert reg.promoted().id == "a" and "skipped c" in reg.index().history[-1].detail


def test_a_subprocess_error_is_one_stderr_line(tmp_path):
    reg = populated(tmp_path)
    (reg.root / "entries" / "e.json").write_text('{"id": 1}')
    done = subprocess.run([str(BIN / "tokencompose"), "models", "registry", "--registry", str(reg.root), "promote",
                           "e"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"registry: corrupt: {reg.root}/entries/e.json: not a valid registry entry: id: Input should be a valid "
        "string (and 7 more)",
        f"registry: cannot promote: {reg.root}/entries/e.json: not a valid registry entry: id: Input should be a "
        "valid string (and 7 more)"]


def test_runs_of_killed_retrains_are_registered_as_interrupted_and_collected(tmp_path, capsys):
    reg = populated(tmp_path)
    runs = tmp_path / "runs"
    killed = runs / "20261201T000000Z-aaaaaa"
    (killed / "train").mkdir(parents=True)
    (killed / "train" / "train_config.json").write_text(json.dumps({"pretrained_model": str(tmp_path / "models/c"),
                                                                    "shards": ["s-0.tar"]}))
    (runs / "not an id").mkdir()
    with running(reg, runs / "20261201T000001Z-bbbbbb"):           # a run that is alive is left alone
        registered = register_interrupted(reg, runs, tmp_path / "sd", tmp_path / "data", "h", "test")
        assert [e.id for e in registered] == [killed.name]
        code, err, out = cli(reg.root, "list", capsys=capsys)
        row = next(line for line in out.splitlines() if line.startswith(killed.name))
        assert "failed (interrupted)" in row
        entry = reg.entry(killed.name)
        assert entry.status == "failed" and entry.dataset_version is None and entry.dataset_shards == ["s-0.tar"]
        assert Path(entry.base_model) == tmp_path / "models/c"
        code, err, out = cli(reg.root, "gc", "--runs", str(runs), "--dry-run", capsys=capsys)
        assert code == 0 and f"would remove {killed}: entry {killed.name} failed (interrupted)" in out
        assert f"kept {runs}/20261201T000001Z-bbbbbb: running" in out and killed.is_dir()
        code, err, out = cli(reg.root, "gc", "--runs", str(runs), capsys=capsys)
        assert code == 0 and f"removed {killed}" in out and not killed.exists()
        assert (runs / "20261201T000001Z-bbbbbb").is_dir() and (runs / "not an id").is_dir()
    assert reg.index().history[-1].action == "gc"
    assert cli(reg.root, "check", capsys=capsys)[0] == 0


def test_gc_never_removes_a_folder_holding_a_model(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    runs = tmp_path / "runs"
    kept = make_entry(tmp_path, "keep", "rejected", "2026-11-30T01:00:00+00:00")
    moved = runs / "keep" / "train" / "pipeline"
    shutil.copytree(kept.pipeline_dir, moved)
    reg.register(kept.model_copy(update={"pipeline_dir": moved}))
    assert collect_runs(reg, runs) == [f"kept {runs}/keep: entry keep is rejected"] and moved.is_dir()


# ---------------------------------------------------------------- hypothesis: any damage
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
hostile_ids = st.one_of(st.sampled_from(["a", "b", "c", "d", "e", "zzz", "", "../a", "/etc", ".x", "x" * 300, "a\nb"]),
                        st.text(max_size=12), st.integers(), st.none())
ENTRY_FIELDS = ["id", "status", "created", "pipeline_dir", "base_model", "parent", "dataset_dir", "dataset_version",
                "dataset_shards", "train_config_hash", "steps", "multigen", "gate", "reason", "extra"]
INDEX_FIELDS = ["format", "promoted", "history", "extra"]
EVENT_FIELDS = ["at", "action", "entry", "by", "detail", "extra"]
TARGETS = ["registry.json", "entries/a.json", "entries/b.json", "entries/c.json", "entries/d.json", "entries/e.json"]


@st.composite
def damage(draw):
    """One change to one registry file: deleted, truncated, overwritten with bytes or any JSON, one
    field set to a hostile value, a history event edited, or a stray file added to entries/."""
    target = draw(st.sampled_from(TARGETS + ["entries/<new>"]))
    kind = draw(st.sampled_from(["delete", "truncate", "bytes", "json", "field", "field", "event", "missing model"]))
    if target == "entries/<new>":
        name = draw(st.sampled_from(["zzz.json", "x" * 200 + ".json", ".hidden.json", "notes.txt", "f.json"]))
        return ("new", name, draw(st.one_of(st.binary(max_size=40), json_values.map(json.dumps),
                                            st.just(json.dumps({"id": "f"})))))
    if kind == "truncate":
        return (kind, target, draw(st.integers(0, 200)))
    if kind == "bytes":
        return (kind, target, draw(st.binary(max_size=60)))
    if kind == "json":
        return (kind, target, draw(json_values))
    if kind in ("field", "event"):
        fields = INDEX_FIELDS if target == "registry.json" else ENTRY_FIELDS
        field = draw(st.sampled_from(EVENT_FIELDS if kind == "event" else fields))
        value = draw(st.one_of(hostile_ids, json_values, st.sampled_from(["promoted", "rollback", 0, 2, 1, -1])))
        return (kind, target, (field, value, draw(st.integers(0, 9))))
    return (kind, target, None)


def apply(root: Path, change) -> None:
    kind, target, value = change
    reg_root = root / "registry"
    if kind == "new":
        (reg_root / "entries" / target).write_bytes(value if isinstance(value, bytes) else value.encode())
        return
    path = reg_root / target
    if kind == "delete":
        path.unlink(missing_ok=True)
    elif not path.exists():
        return
    elif kind == "truncate":
        path.write_bytes(path.read_bytes()[:value])
    elif kind == "bytes":
        path.write_bytes(value)
    elif kind == "json":
        path.write_text(json.dumps(value))
    else:
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            return
        if not isinstance(data, dict):
            return
    if kind == "missing model":  # the entry now names a pipeline folder that does not exist
        if "pipeline_dir" in data:
            data["pipeline_dir"] = str(root / "gone")
            path.write_text(json.dumps(data))
    elif kind in ("field", "event"):
        field, new, position = value
        if kind == "event":
            history = data.get("history")
            if isinstance(history, list) and history and isinstance(history[position % len(history)], dict):
                history[position % len(history)][field] = new
        else:
            data[field] = new
        path.write_text(json.dumps(data))


def _one_line_each(code: int, err: list[str]) -> None:
    assert code in (0, 2)
    assert all(line.startswith("registry: ") and len(line) < 1200 for line in err), err


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One populated registry copied for every example; its models are shared and must never change."""
    root = tmp_path_factory.mktemp("template")
    populated(root)
    return root, model_digests(root)


@BOUNDED
@given(changes=st.lists(damage(), min_size=1, max_size=4), target=hostile_ids)
def test_any_damage_is_reported_line_by_line_and_repaired_without_touching_models(changes, target, capsys, template):
    models, digests = template
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copytree(models / "registry", root / "registry")
        reg = ModelRegistry(root / "registry")
        for change in changes:
            apply(root, change)
        capsys.readouterr()
        code, err, out = cli(reg.root, "check", capsys=capsys)
        _one_line_each(code, err)
        for line in err[:-1]:
            event(line.split(":")[1].strip())
        if code == 0:
            assert err == []
        else:
            assert err[-1].endswith(f"problem(s) in {reg.root}") or "newer tokencompose" in err[-1]
        if any("newer tokencompose" in line for line in err):      # refused whole, never rewritten
            assert cli(reg.root, "repair", capsys=capsys)[0] == 2
            return
        problems = err[:-1]
        list_code, list_err, _ = cli(reg.root, "list", capsys=capsys)
        assert list_code == 0 and list_err == problems            # every command starts with the same check
        for verb in (["promote", target if isinstance(target, str) else "e"], ["rollback"]):
            _one_line_each(*cli(reg.root, *verb, capsys=capsys)[:2])
        code, err, out = cli(reg.root, "repair", capsys=capsys)
        assert code == 0, err
        code, err, out = cli(reg.root, "check", capsys=capsys)
        assert code == 0 and err == [], err
        promoted = ModelRegistry(reg.root).promoted()
        if promoted is not None:
            assert (Path(promoted.pipeline_dir) / "model_index.json").is_file()
        assert model_digests(models) == digests
