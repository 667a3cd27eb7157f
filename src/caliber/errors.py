"""Caliber's exceptions, in one place.

Every error a user can cause or meet derives from :class:`CaliberError`. The command line maps
each to one line on stderr and an exit code (``exit_code``); backends translate their own
errors (sqlite3, HTTP, specklepy) into these at their boundary, so nothing above a backend
ever sees a foreign exception.
"""

from __future__ import annotations


class CaliberError(Exception):
    """Base of every error Caliber raises on purpose."""

    exit_code = 1


class UsageError(CaliberError):
    """Bad input from the user: a wrong argument, a broken file, an unknown id."""

    exit_code = 2


class WorkflowDefinitionError(UsageError):
    """A workflow built in Python is not valid (bad function, duplicate names, bad branches)."""


class WorkflowFileError(UsageError):
    """A workflow file cannot be read; the message names the file and the place."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if len(problems) == 1:
            message = f"{path}: {problems[0]}"
        else:
            message = f"{path}: {len(problems)} problems: " + "; ".join(problems)
        super().__init__(message)


class ExportError(UsageError):
    """A workflow cannot be written to JSON without changing its meaning."""


class AttachmentError(UsageError):
    """An attachment is missing, or its path is absolute, climbs out with ``..`` or escapes."""


class NotFoundError(UsageError):
    """No workload or results with that id (or prefix)."""


class AmbiguousIdError(UsageError):
    """An id prefix matches more than one entry; the message lists the candidates."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix = prefix
        self.candidates = candidates
        shown = ", ".join(candidates[:10]) + (" ..." if len(candidates) > 10 else "")
        super().__init__(f"id prefix {prefix!r} is ambiguous: it matches {shown}")


class QueueError(CaliberError):
    """The queue cannot be used: a broken database, an unreachable server, a refused request."""


class QueueDamagedError(QueueError):
    """The queue's storage is damaged or is not a queue at all: trying again cannot help."""


class BlobMismatchError(QueueError):
    """A stored blob's bytes do not hash to its name (changed on disk, or damaged): whatever
    refers to it is refused, never run or handed out, like a tampered workload."""


class WorkspaceError(CaliberError):
    """The pinion cannot write its runs folder (full, read-only, not permitted)."""


class ChildStartError(CaliberError):
    """The pinion cannot start a workload's process (out of processes, memory or file
    descriptors): the machine's problem, not the workload's."""


class ClaimReturnedError(QueueError):
    """A claim was won but its workload could not be read (an object missing on the server, a
    request that failed); the claim was given back at once, its attempt uncounted, or (its
    objects missing again and again) the workload was failed: ``outcome`` says which."""

    def __init__(self, message: str, *, workload_id: str,
                 outcome: str = "put back in the queue") -> None:
        super().__init__(message)
        self.workload_id = workload_id
        self.outcome = outcome


class ResumeError(UsageError):
    """A run cannot be resumed from the Results given (another workflow, changed code)."""


class QueueStateError(UsageError):
    """The request does not fit the workload's state (for example deleting a running one)."""


class LeaseLostError(QueueError):
    """The pinion no longer holds the workload: its lease ran out and another pinion took it."""


class SecretKeyError(CaliberError):
    """The secret key cannot be read or created, or its file is readable by others."""


class ConfigError(UsageError):
    """A setting is missing or invalid (environment variables, ``.caliber/.env``)."""
