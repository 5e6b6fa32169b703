"""The evaluate-multigen flow under a real Prefect API, with tiny random models."""
from __future__ import annotations

import httpx
import pytest

from tokencompose.flows.evaluate import FLOW_NAME, evaluate_multigen
from tokencompose.schemas.evaluation import EvaluateConfig
from tokencompose.tasks.multigen.run import EvaluationError
from tokencompose.tasks.multigen.toy import save_random_owlv2

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def tiny_owl(tiny_sd, tmp_path_factory):
    return save_random_owlv2(tmp_path_factory.mktemp("owl") / "owlv2", tokenizer_dir=tiny_sd / "tokenizer")


def config(tiny_sd, tiny_owl, out, **extra) -> EvaluateConfig:
    return EvaluateConfig.model_validate({
        "pipelines": [str(tiny_sd)], "out_dir": str(out), "benchmark": {"name": "ade20k", "limit": 2},
        "generation": {"images_per_prompt": 2, "steps": 1, "resolution": 32, "batch_size": 4},
        "detection": {"detector": str(tiny_owl)}, "models": {"device": "cpu"},
        "report": {"bootstrap_samples": 50, "attention_prompts": 1, "grid_prompts": 1, "grid_images": 1}, **extra})


def artifacts(flow_run_id) -> dict:
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}, "sort": "CREATED_DESC", "limit": 50,
            "offset": 0}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body)
    response.raise_for_status()
    return {a["key"]: a for a in response.json()}


def test_the_flow_generates_detects_and_reports(prefect_api, one_thread, tiny_sd, tiny_owl, tmp_path):
    cfg = config(tiny_sd, tiny_owl, tmp_path / "eval")
    state = evaluate_multigen(config=cfg, return_state=True)
    assert state.is_completed() and evaluate_multigen.name == FLOW_NAME
    summary = state.result()
    assert set(summary["models"]["tiny-sd"]) == {"MG1", "MG2", "MG3", "MG4", "MG5"}
    assert (tmp_path / "eval" / "report.md").exists() and (tmp_path / "eval" / "evaluate_config.json").exists()
    found = artifacts(state.state_details.flow_run_id)
    assert found["multigen-scores"]["type"] == "table" and "MG3" in found["multigen-scores"]["data"]
    assert found["multigen-report"]["type"] == "markdown" and "# MultiGen: ade20k" in found["multigen-report"]["data"]
    # the same flow again resumes: nothing is generated or detected twice, the scores are the same
    again = evaluate_multigen(config=cfg)
    assert again["models"] == summary["models"]


def test_the_flow_stops_before_work_on_a_bad_folder(prefect_api, tiny_sd, tiny_owl, tmp_path):
    cfg = config(tiny_owl, tiny_owl, tmp_path / "bad", labels=["owl-as-sd"])
    state = evaluate_multigen(config=cfg, return_state=True)
    assert state.is_failed()
    with pytest.raises(EvaluationError, match="owl-as-sd: .*no model_index.json"):
        state.result()
    assert not (tmp_path / "bad").exists()


def test_the_flow_scores_the_metrics_beside_multigen_in_their_own_task(prefect_api, one_thread, tiny_sd, tiny_owl,
                                                                         tmp_path):
    metrics = {"visor": {"enabled": True, "limit": 2, "images_per_prompt": 1, "detector": str(tiny_owl)},
               "latency": {"enabled": True, "prompts": 1, "warmup": 0, "batch_size": 1}}
    state = evaluate_multigen(config=config(tiny_sd, tiny_owl, tmp_path / "eval", metrics=metrics), return_state=True)
    assert state.is_completed()
    figures = state.result()["models"]["tiny-sd"]
    assert 0 <= figures["OA"] <= 100 and figures["latency_s"] > 0
    from prefect.settings import PREFECT_API_URL

    body = {"flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}}, "limit": 50, "offset": 0}
    runs = httpx.post(f"{PREFECT_API_URL.value()}/task_runs/filter", json=body).json()
    names = {run["name"]: run for run in runs}
    assert names["score-metrics-tiny-sd"]["state"]["type"] == "COMPLETED" and "gpu" in names["score-metrics-tiny-sd"]["tags"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Beside the paper's Table 1" in report and "| paper: SD1.4 | 29.86 |" in report
