"""Deployments of the flows, served by `tokencompose serve` (a long-running process that picks up
runs started with `prefect deployment run FLOW/DEPLOYMENT`)."""
from __future__ import annotations

from prefect import serve

from tokencompose.data import demo_settings
from tokencompose.flows.build import build_grounded_coco

DEPLOYMENT_NAME = "local"


def build_deployment(name: str = DEPLOYMENT_NAME, out_dir: str = "tokencompose-out", cron: str | None = None):
    """The build flow as a deployment whose default parameters build the bundled sample into
    ``out_dir``; a run overrides them with ``--params '{"config": {...}}'``."""
    defaults = {"config": {**demo_settings(), "output": {"out_dir": out_dir}}}
    return build_grounded_coco.to_deployment(name=name, parameters=defaults, cron=cron,
                                             description="Grounded COCO shards (tokencompose)")


def serve_deployments(out_dir: str, cron: str | None = None, extra: list | None = None) -> None:
    serve(build_deployment(out_dir=out_dir, cron=cron), *(extra or []))
