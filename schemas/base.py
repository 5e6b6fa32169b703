"""The two pydantic bases every contract in schemas/ derives from."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A configuration section: unknown keys are errors (a typo never passes silently) and a
    validated configuration cannot change afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictRecord(BaseModel):
    """A record written or read by the pipeline (sample, index, stats, manifest): unknown keys are
    errors; the stage that builds it may still fill it in."""

    model_config = ConfigDict(extra="forbid")
