"""The edit-images flow under a real Prefect API, with the tiny random model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tasks.editing.test_run import local_weights, write_pie_bench  # noqa: F401  (the fixture, for request)
from tokencompose.flows.edit import BENCH_FLOW_NAME, FLOW_NAME, edit_images, score_pie_bench
from tokencompose.schemas.editing import EditConfig, PieBenchConfig

pytestmark = pytest.mark.server


def test_the_flow_edits_and_keeps_the_background(prefect_api, one_thread, tiny_sd, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    config = EditConfig.model_validate({
        "model": str(tiny_sd), "image": str(tmp_path / "src.png"), "prompt": "a red cup",
        "mask": {"file": str(tmp_path / "mask.png")}, "out_dir": str(tmp_path / "edit"),
        "sampler": {"steps": 1, "strength": 1.0, "resolution": 32, "background": "paste"}, "models": {"device": "cpu"}})
    state = edit_images(config=config, return_state=True)
    assert state.is_completed() and edit_images.name == FLOW_NAME
    out = Path(state.result())
    result, source = (np.asarray(Image.open(out / f"{name}.png")) for name in ("result", "source"))
    kept = mask == 0
    assert np.array_equal(result[kept], source[kept]) and not np.array_equal(result[~kept], source[~kept])


def test_the_pie_bench_flow_edits_and_scores_as_the_direct_run(prefect_api, one_thread, tiny_sd, request, tmp_path):
    """score-pie-bench's tasks (edit per model and batch range, score per model, report) give the images and
    scores of the run in one process (`--no-prefect`)."""
    import json

    from tokencompose.tasks.editing.run import run_pie_bench

    write_pie_bench(tmp_path / "pie")
    common = {"root": str(tmp_path / "pie"), "pipelines": [str(tiny_sd)], "models": {"device": "cpu"},
              "sampler": {"steps": 1, "strength": 1.0, "resolution": 32, "background": "paste", "batch_size": 1},
              **request.getfixturevalue("local_weights")}
    state = score_pie_bench(config=PieBenchConfig.model_validate({**common, "out_dir": str(tmp_path / "flow")}),
                            return_state=True)
    assert state.is_completed() and score_pie_bench.name == BENCH_FLOW_NAME
    run_pie_bench(PieBenchConfig.model_validate({**common, "out_dir": str(tmp_path / "direct")}))
    flow_report, direct_report = (json.loads((tmp_path / name / "report.json").read_text())
                                  for name in ("flow", "direct"))
    assert flow_report["means"] == direct_report["means"] and flow_report["items"] == direct_report["items"]
    (label,) = flow_report["items"]
    for key in ("000000000000", "000000000001"):
        assert (tmp_path / "flow" / label / f"{key}.png").read_bytes() == \
            (tmp_path / "direct" / label / f"{key}.png").read_bytes()
