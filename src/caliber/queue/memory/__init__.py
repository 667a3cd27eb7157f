"""A queue in this process's memory (``memory://NAME``): every verb of a backend, with
nothing on disk, for tests (the contract suite runs against it) and for trying things out.
Chosen by its URL (``select``), opened by ``backend``."""
