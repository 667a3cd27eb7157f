"""Warm and cold stops: the first SIGINT/SIGTERM asks the pinion to finish the running
workload and take no more; the second stops the child and puts its workload back.

The handlers only set flags; the pinion's loop looks at them. The previous handlers are
restored when the pinion ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass
class StopFlags:
    """``warm``: take no new work. ``cold``: stop the running workload too."""

    warm: bool = False
    cold: bool = False
    signal_name: str = ""

    def request(self, name: str) -> None:
        if self.warm:
            self.cold = True
        self.warm = True
        self.signal_name = name


@contextmanager
def stop_on_signals(flags: StopFlags, on_signal: object = None) -> Iterator[StopFlags]:
    """Install the handlers (in the main thread only) and restore the old ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield flags
        return
    wanted = [signal.SIGINT, signal.SIGTERM]
    previous = {sig: signal.getsignal(sig) for sig in wanted}

    def handler(signum: int, frame: FrameType | None) -> None:
        flags.request(signal.Signals(signum).name)
        if callable(on_signal):
            on_signal(flags)

    for sig in wanted:
        signal.signal(sig, handler)
    try:
        yield flags
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
