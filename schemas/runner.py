"""Where a flow's tasks run: local threads (the default), a Dask cluster or a Ray cluster.

The runner is part of the run, not of the dataset: ``BuildConfig.content_dict`` leaves it out, so
the configuration hash, the cache keys and the shards' bytes are the same whichever runner builds them.
The engines themselves (prefect-dask, prefect-ray) do the scheduling, data movement and worker-loss
recovery; see tokencompose/runners/ and docs/scale-out.md.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokencompose.schemas.base import StrictModel

RunnerKind = Literal["threads", "dask", "ray"]

# The Prefect task tag of the tasks that load a model: on Dask or Ray each asks for runner.gpus_per_task
# GPUs (tokencompose/runners/); the threads runner ignores it.
GPU_TAG = "gpu"

# A Dask scheduler: tcp://host:8786 (also tls://, ucx://, ws://, wss://); host is a name, IPv4 or [IPv6].
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)"
_DASK_ADDRESS = re.compile(rf"(tcp|tls|ucx|ws|wss)://{_HOST}:\d{{1,5}}")
# A Ray cluster: "auto", ray://host:10001 (Ray Client), or host:6379 (the head node's GCS).
_RAY_ADDRESS = re.compile(rf"auto|(ray://)?{_HOST}:\d{{1,5}}")


def _port_ok(address: str) -> bool:
    port = int(address.rsplit(":", 1)[1])
    return 0 < port < 65536


class RunnerError(RuntimeError):
    """The cluster cannot run the flow: a worker cannot write the output folder, no worker has the GPUs
    the GPU tasks ask for, no worker joined in time. Raised (by tokencompose/runners/) before any task runs."""


class RunnerConfig(StrictModel):
    """The task runner: threads in this process, a new local Dask or Ray cluster, or an existing one."""

    kind: RunnerKind = Field(default="threads", description="threads: this process (the default); dask: "
                             "prefect-dask (a new LocalCluster, or dask_address); ray: prefect-ray (a local Ray, "
                             "or ray_address)", json_schema_extra={"cli_shortcut": "runner-kind"})
    processes: int | None = Field(default=None, ge=1, le=1024, description="dask/ray without an address: worker "
                                  "processes of the new local cluster (null: one per CPU core, or one per GPU "
                                  "when the tasks ask for GPUs)", json_schema_extra={"cli_shortcut": "processes"})
    dask_address: str | None = Field(default=None, description="an existing Dask scheduler, e.g. tcp://host:8786 "
                                     "(implies kind dask)", json_schema_extra={"cli_shortcut": "dask-address"})
    ray_address: str | None = Field(default=None, description="an existing Ray cluster: ray://host:10001, "
                                    "host:6379 or auto (implies kind ray)",
                                    json_schema_extra={"cli_shortcut": "ray-address"})
    gpus_per_task: int | None = Field(default=None, ge=0, le=16, description="GPUs each model task asks for (Dask "
                                      "worker resource GPU, Ray num_gpus); null: 1 when the cluster has GPUs, else "
                                      "0; tasks without models never ask")
    probe_timeout_s: float = Field(default=120.0, gt=0, description="how long to wait for a first worker of an "
                                   "existing cluster before the shared-storage check gives up")

    @field_validator("dask_address", "ray_address", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is not None and not (_DASK_ADDRESS.fullmatch(value) and _port_ok(value)):
            raise ValueError(f"runner.dask_address must look like tcp://host:8786 (or tls://, ucx://, ws://, "
                             f"wss://), got {value!r}")
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is not None and not (_RAY_ADDRESS.fullmatch(value) and (value == "auto" or _port_ok(value))):
            raise ValueError(f"runner.ray_address must be ray://host:10001, host:6379 or auto, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _address_implies_kind(cls, data: object) -> object:
        if isinstance(data, dict) and "kind" not in data:
            if data.get("dask_address") and not data.get("ray_address"):
                data = {**data, "kind": "dask"}
            elif data.get("ray_address") and not data.get("dask_address"):
                data = {**data, "kind": "ray"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "RunnerConfig":
        if self.dask_address and self.kind != "dask":
            raise ValueError(f"runner.dask_address is for runner.kind 'dask', not {self.kind!r}")
        if self.ray_address and self.kind != "ray":
            raise ValueError(f"runner.ray_address is for runner.kind 'ray', not {self.kind!r}")
        if self.processes is not None and (self.kind == "threads" or self.dask_address or self.ray_address):
            raise ValueError("runner.processes sizes a new local Dask or Ray cluster; an existing cluster "
                             "(or the threads runner: see workers) has its own")
        return self

    @property
    def distributed(self) -> bool:
        return self.kind != "threads"

    def describe(self) -> str:
        if self.kind == "dask":
            return f"dask at {self.dask_address}" if self.dask_address else \
                f"dask LocalCluster ({self.processes or 'one per core'} processes)"
        if self.kind == "ray":
            return f"ray at {self.ray_address}" if self.ray_address else "a local ray"
        return "threads"
