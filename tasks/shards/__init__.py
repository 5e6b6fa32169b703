"""Writing and checking the dataset: shard building, the tar format, the build identity and the output folder."""
