"""The deployments served by `tokencompose serve`, the one-process alternative to prefect.yaml and a
worker: the same names (build-grounded-coco/local, train-tokencompose/local), run in this process."""
from __future__ import annotations

from prefect import serve

from tokencompose.data import demo_settings
from tokencompose.flows.build import build_grounded_coco
from tokencompose.flows.train import train_tokencompose

DEPLOYMENT_NAME = "local"


def build_deployment(name: str = DEPLOYMENT_NAME, out_dir: str = "tokencompose-out", cron: str | None = None):
    """The build flow as a deployment whose default parameters build the bundled sample into
    ``out_dir``; a run replaces them with ``--params '{"config": {...}}'``."""
    defaults = {"config": {**demo_settings(), "output": {"out_dir": out_dir}}}
    return build_grounded_coco.to_deployment(name=name, parameters=defaults, cron=cron,
                                             description="Grounded COCO shards (tokencompose)")


def train_deployment(name: str = DEPLOYMENT_NAME):
    """The training flow; a run gives its TrainConfig with ``--params '{"config": {...}}'``."""
    return train_tokencompose.to_deployment(name=name, description="TokenCompose fine-tuning (tokencompose)")


def serve_deployments(out_dir: str, cron: str | None = None, extra: list | None = None) -> None:
    serve(build_deployment(out_dir=out_dir, cron=cron), train_deployment(), *(extra or []))
