"""Data contracts: the build configuration, the shard sample, the index and the reports."""
