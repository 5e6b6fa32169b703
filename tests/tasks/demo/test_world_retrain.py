"""The world's retraining round, the fast parts: growing the world keeps its images, the round's
configuration is the world's (its build, trainings, evaluation and the gate less FID and CLIP score), and
a folder without the world demo is refused before any work. The round itself runs in
tests/flows/test_world_demo.py."""
import hashlib
import json
from pathlib import Path

from tokencompose.cli import main
from tokencompose.tasks.demo.world import PAPER_PIXEL_WEIGHT, PAPER_TOKEN_WEIGHT, WorldProtocol
from tokencompose.tasks.demo.world_retrain import grow_world, retrain_config, retrain_problems, world_model
from tokencompose.tasks.source.world import WORLD_FILE, write_world


def image_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").glob("*.png"))}


def test_growing_the_world_keeps_every_image_and_adds_new_ones(tmp_path):
    source = write_world(tmp_path / "train", 12, seed=5, image_size=32)
    before = image_digests(source)
    captions = json.loads((source / "captions.json").read_text())["annotations"]
    assert grow_world(source, 5) == 17
    after = image_digests(source)
    assert len(after) == 17 and {name: after[name] for name in before} == before
    grown = json.loads((source / "captions.json").read_text())["annotations"]
    assert grown[:12] == captions and len(grown) == 17
    assert json.loads((source / WORLD_FILE).read_text())["images"] == 17
    # the same as a world written at that size from the start
    assert image_digests(write_world(tmp_path / "direct", 17, seed=5, image_size=32)) == after


def test_the_round_is_configured_as_the_world_with_the_default_gate_less_fid_and_clip(tmp_path):
    protocol = WorldProtocol.reduced()
    config = retrain_config(tmp_path, protocol)
    assert config.base_model == world_model(tmp_path) and config.steps == protocol.retrain_steps
    assert (config.gate.level, config.gate.margin, config.gate.confidence) == (3, 0.0, 0.95)
    assert config.gate.fid_tolerance is None and config.gate.clip_tolerance is None
    train = config.train_config(config.base_model, ["x.tar"], tmp_path / "run")
    assert (train.token_weight, train.pixel_weight) == (PAPER_TOKEN_WEIGHT, PAPER_PIXEL_WEIGHT)
    assert train.resolution == protocol.image_size and train.max_steps == protocol.retrain_steps
    evaluation = config.evaluate_config(["a", "b"], ["a", "b"], tmp_path / "eval")
    assert evaluation.detection.detector == "world" and evaluation.benchmark.file == tmp_path / "prompts.json"
    assert evaluation.benchmark.limit == protocol.retrain_prompts
    assert config.build.output.out_dir == tmp_path / "data" / "train"


def test_a_folder_without_the_world_demo_is_refused_before_work(tmp_path, capsys):
    problems = retrain_problems(tmp_path)
    assert len(problems) == 3 and all("run `tokencompose demo world --out" in p for p in problems)
    assert main(["demo", "retrain", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cannot start:") and "grounded model" in error and "prompts.json" in error
    assert not (tmp_path / "registry").exists()
