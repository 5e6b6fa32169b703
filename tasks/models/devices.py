"""Device and precision choices shared by the model backends."""
from __future__ import annotations

def resolve_device(name: str = "auto") -> str:
    """'auto' is the first GPU when torch sees one, else the CPU; anything else is kept."""
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"models.device is {name!r} but torch sees no CUDA device")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def uses_half(device: str, half_precision: bool) -> bool:
    """Half precision runs only on a GPU: CPU fp16 kernels are slow or missing, so the CPU is fp32."""
    return half_precision and device.startswith("cuda")


def autocast(device: str, half: bool):
    """fp16 autocast on a GPU when ``half``; a no-op context otherwise. Weights stay fp32, so
    numerically sensitive ops (softmax, norms, box decoding) run in fp32 under autocast."""
    import contextlib

    import torch

    if half and device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
