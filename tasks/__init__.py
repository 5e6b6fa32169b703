"""Units of work: plain functions and small backend classes, testable without Prefect."""
