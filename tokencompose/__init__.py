"""tokencompose: grounded COCO data for TokenCompose, and training with it."""

__version__ = "0.1.0"
