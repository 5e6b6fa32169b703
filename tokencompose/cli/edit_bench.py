"""`tokencompose edit-bench`: defined beside `edit` in :mod:`tokencompose.cli.edit`."""
from tokencompose.cli.edit import add_bench_cli as add_cli

__all__ = ["add_cli"]
