"""Service instances: where each service runs and whether it is healthy."""
