"""Orchestration only: Prefect flows that wire the tasks, take parameters and define deployments."""
