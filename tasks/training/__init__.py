"""TokenCompose fine-tuning: grounding losses on the UNet's cross-attention, trained from build-grounded-coco shards."""
from tokencompose.schemas.training import TrainConfig

__all__ = ["TrainConfig"]
