"""Value types that several configurations share: numeric precision and image resolution."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

# A floating-point format a model runs in under torch.autocast (or plain fp32).
AutocastDtype = Literal["fp32", "fp16", "bf16"]
# Inference (generation, detection, attention maps): "auto" is bf16 on a GPU and fp32 on the CPU.
InferencePrecision = Literal["auto", AutocastDtype]
# Training: accelerate's mixed_precision values ("no" trains in fp32).
MixedPrecision = Literal["no", "fp16", "bf16"]


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"resolution {value} must be a multiple of 8")
    return value


# Square images in pixels: the VAE's latents are 1/8 of the side, so a side must divide by 8.
Resolution = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_8)]
