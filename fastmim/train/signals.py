"""Ctrl-C and a scheduler's SIGTERM, taken over for the whole command: while active they only record the
signal, which the training loop acts on after the step at hand (it saves, then stops); one received while the
run was still being built stops it before anything is written. Light (no torch), so that entry points take the
signals over before their heavy imports, where a KeyboardInterrupt could be swallowed by a library's bare
`except:`."""
from __future__ import annotations

import signal


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run: after a step (last.pt holds it), or before it started."""

    def __init__(self, signal_name: str, before_start: bool = False):
        super().__init__(signal_name)
        self.signal_name, self.before_start = signal_name, before_start


class StopSignals:
    """While active, SIGINT and SIGTERM are recorded in `received` (the main thread's handlers; a second signal
    of the same kind gets the previous behaviour back and is delivered)."""

    def __init__(self):
        self.received: str | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            previous = self.previous.get(signum, signal.SIG_DFL)
            if previous in (signal.SIG_IGN, None):  # ignored before (a background job): the default now
                previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous)
            signal.raise_signal(signum)
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
