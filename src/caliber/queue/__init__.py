"""The queue: workloads, the run-secret, the backend protocol and its backends."""
