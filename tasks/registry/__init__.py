"""The model registry and the retraining decisions made over it."""
