"""Model backends: which implementation each stage uses, where weights are found, devices and preflight checks."""
