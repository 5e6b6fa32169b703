"""Evaluation verifies before it trusts: a broken image shard or detections file is redone and reported,
a broken one met between steps is named, never a bare tarfile error."""
from __future__ import annotations

import json
import shutil

import pytest

from tokencompose.tasks.multigen import integrity
from tokencompose.tasks.multigen.plan import EvaluationError, model_rows
from tokencompose.tasks.multigen.run import detect_model, evaluate_models, preflight

QUICK = dict(report={"attention_prompts": 0, "grid_prompts": 1, "grid_images": 1})


def snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != integrity.REDONE_FILE and not p.name.startswith("report")}


@pytest.fixture
def finished(make_eval_config):
    """A finished two-shard run of one model, its files' bytes, and the model's folders."""
    config = make_eval_config(**QUICK)
    report = evaluate_models(config)
    model = config.out_dir / report.models[0].label
    detections = next(model.glob("detections-*"))
    return config, report, snapshot(config.out_dir), model, detections


@pytest.mark.slow
def test_every_output_has_its_record_and_a_clean_run_redoes_nothing(finished):
    config, report, before, model, detections = finished
    for path in [*model.glob("images/*.tar"), *detections.glob("*.jsonl")]:
        assert integrity.status(path) == (True, None), path
    assert report.redone == [] and "Files redone" not in report.markdown
    again = evaluate_models(config)
    assert again.redone == [] and snapshot(config.out_dir) == before


@pytest.mark.slow
def test_truncated_and_overwritten_files_are_redone_and_reported(finished):
    config, report, before, model, detections = finished
    shard = model / "images" / "prompts-000000-000001.tar"
    shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])           # truncated
    lines = detections / "prompts-000002-000003.jsonl"
    data = bytearray(lines.read_bytes())
    data[10:20] = b"X" * 10                                                          # overwritten, same size
    lines.write_bytes(bytes(data))
    again = evaluate_models(config)
    assert snapshot(config.out_dir) == before                                        # the same bytes again
    assert again.models == report.models
    label = model.name
    assert again.redone == [
        f"{label}/images/prompts-000000-000001.tar redone: {shard.stat().st_size // 2} bytes, "
        f"{shard.stat().st_size} when written (truncated or overwritten)",
        f"{label}/{detections.name}/prompts-000002-000003.jsonl redone: sha256 differs from the one recorded when "
        f"it was written (overwritten or damaged)"]
    assert "## Files redone" in again.markdown and f"- {again.redone[0]}" in again.markdown
    assert json.loads(again.json_path.read_text())["redone"] == again.redone


@pytest.mark.slow
def test_a_truncated_shard_without_detections_is_redone_not_a_tar_error(finished):
    """The issue's case: a truncated shard counted as done and detection died on every rerun."""
    config, report, before, model, detections = finished
    shard = model / "images" / "prompts-000002-000003.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    shutil.rmtree(detections)
    again = evaluate_models(config)
    assert again.models == report.models and snapshot(config.out_dir) == before
    assert [line.split(" redone: ")[0] for line in again.redone] == [f"{model.name}/images/{shard.name}"]


@pytest.mark.slow
def test_a_shard_without_its_record_is_redone(finished):
    config, _, before, model, _ = finished
    integrity.check_path(model / "images" / "prompts-000000-000001.tar").unlink()
    again = evaluate_models(config)
    assert again.redone == [f"{model.name}/images/prompts-000000-000001.tar redone: no valid record beside it "
                            f"(prompts-000000-000001.tar.check.json)"]
    assert snapshot(config.out_dir) == before


@pytest.mark.slow
def test_detections_made_from_other_images_are_redone(finished):
    config, _, before, model, detections = finished
    lines = detections / "prompts-000000-000001.jsonl"
    record = json.loads(integrity.check_path(lines).read_text())
    integrity.write_record(lines, record["sha256"], record["bytes"], made_from="f" * 64)
    again = evaluate_models(config)
    assert again.redone == [f"{model.name}/{detections.name}/{lines.name} redone: made from other images (its "
                            f"image shard was generated again)"]
    assert snapshot(config.out_dir) == before


def test_a_file_broken_between_steps_is_named_in_one_line(finished):
    config, _, _, model, detections = finished
    plan = preflight(config)
    (run,) = plan.runs
    shard = model / "images" / "prompts-000002-000003.tar"
    shard.write_bytes(b"not a tar")
    with pytest.raises(EvaluationError) as error:
        detect_model(plan, run, "cpu")
    message = str(error.value)
    assert "\n" not in message and "prompts-000002-000003.tar (9 bytes" in message and "run the evaluation again" in message
    lines = detections / "prompts-000000-000001.jsonl"
    lines.write_text(lines.read_text()[:-40])
    with pytest.raises(EvaluationError) as error:
        model_rows(plan, run)
    assert str(error.value).startswith(f"{run.label}: {lines}: ") and "truncated or overwritten" in str(error.value)
