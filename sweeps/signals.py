"""Ctrl-C and SIGTERM stop a sweep within seconds, at any point, with one line.

The command line installs :func:`stop_on_signals`: SIGINT and SIGTERM raise :class:`Stopped`
(a ``KeyboardInterrupt``) in the main thread wherever it is (planning, joining, dispatching),
and the runner's ``finally`` blocks shut Ray down and release the lock on the way out. A write
that has begun finishes first (:func:`deferred`): a pack's parts are on disk whole, or not at
all, when the driver stops. A second signal while the driver is stopping ends it at once.

Ray installs its own SIGTERM handler in ``ray.init`` (it exits through ``sys.exit`` with a
crash dump); :func:`keep_handlers` puts ours back.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The driver was asked to stop by a signal (``name``: SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by the signal


_received: list[int] = []  # signals that stopped this process (Ray may re-raise our exception
# as a plain KeyboardInterrupt: ray.get and ray.wait turn what a handler raises into one)


def received() -> Stopped | None:
    """The first stopping signal this process received, as a :class:`Stopped`, or None."""
    return Stopped(_received[0]) if _received else None


def _raise_stopped(signum: int, frame) -> None:
    _received.append(signum)
    for sig in SIGNALS:  # a second signal while stopping: no more clean-up, end now
        signal.signal(sig, _exit_now)
    raise Stopped(signum)


def _exit_now(signum: int, frame) -> None:
    os._exit(128 + signum)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread."""
    for sig in SIGNALS:
        signal.signal(sig, _raise_stopped)


def installed() -> bool:
    """True where :func:`stop_on_signals` is in place (the command line)."""
    return signal.getsignal(signal.SIGTERM) is _raise_stopped


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def keep_handlers() -> Iterator[None]:
    """Whatever SIGINT and SIGTERM did before the block, they do after it (``ray.init`` sets
    its own SIGTERM handler)."""
    if not _main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block takes effect when the block is done, so that a
    write that has begun is finished. Only where our handler is installed (the command line)."""
    if not _main_thread() or not installed():
        yield
        return
    arrived: list[int] = []
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for sig in SIGNALS:
            signal.signal(sig, _raise_stopped)
        if arrived:
            _raise_stopped(arrived[0], None)
