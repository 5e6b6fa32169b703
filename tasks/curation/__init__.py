"""Curation beside a dataset: the flags and saved views the viewer writes and the build and training read."""
