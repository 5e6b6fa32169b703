"""A local web viewer for grounded COCO shards (`tokencompose view DIR`); see docs/viewer.md."""
