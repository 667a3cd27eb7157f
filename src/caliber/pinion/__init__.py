"""The pinion: the worker that runs queued workloads in isolation."""
