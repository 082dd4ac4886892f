"""Stopping a run on purpose: SIGTERM and SIGINT, and the waits they interrupt (the run then stops with a message)."""

import signal
import threading
from contextlib import contextmanager
from typing import Optional


class StopRequested(Exception):
    """A signal arrived during a wait that it interrupts (see StopRequest.interruptible); args[0] is its number."""


class StopRequest:
    """SIGTERM or SIGINT asks the loop to stop after the current step and checkpoint; a second SIGINT stops at once.

    Inside `interruptible()` (a wait for data, which can last long on a slow or broken stream) the
    signal ends the wait at once by raising StopRequested.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}
        self._interruptible = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal to another process"

    @contextmanager
    def interruptible(self):
        if self.received is not None:
            raise StopRequested(self.received)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, number, frame):
        if self.received == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        if self._interruptible:
            raise StopRequested(number)
