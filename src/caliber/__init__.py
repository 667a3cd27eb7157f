"""Caliber: queue workflows of plain Python functions and run them later, with every result kept.

>>> import caliber
>>> task = caliber.Task(function=my_module.make_dough, args=[3])
>>> workflow = caliber.Workflow(name="pasta", process=caliber.Process(tasks=[task]))
>>> workflow.export("pasta.json")
>>> results = workflow.run()

Names are imported lazily, so ``import caliber`` (and the command line) starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BranchProcess",
    "CaliberError",
    "Process",
    "Reference",
    "Results",
    "Task",
    "Workflow",
    "__version__",
    "context",
    "get_results",
    "upstream",
]

_LAZY = {
    "Task": "caliber.workflow.model",
    "Process": "caliber.workflow.model",
    "BranchProcess": "caliber.workflow.model",
    "Workflow": "caliber.workflow.model",
    "Reference": "caliber.workflow.attachments",
    "Results": "caliber.results.model",
    "get_results": "caliber.results.api",
    "CaliberError": "caliber.errors",
    "upstream": "caliber.workflow.model",
}

if TYPE_CHECKING:
    from caliber import context
    from caliber.errors import CaliberError
    from caliber.results.api import get_results
    from caliber.results.model import Results
    from caliber.workflow.attachments import Reference
    from caliber.workflow.model import BranchProcess, Process, Task, Workflow, upstream


def __getattr__(name: str) -> Any:
    if name == "context":
        return import_module("caliber.context")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'caliber' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
