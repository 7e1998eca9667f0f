"""One writer per results directory: an exclusive ``flock`` on ``<results>/.lock``.

The kernel drops an ``flock`` when its holder exits, however it exits (``SIGKILL``
included), so a lock can never be left stale by a dead driver: the next driver simply
gets it. The file itself stays (removing a lock file races with a process that has just
opened it); it records who holds the lock (pid, host, start time, command) so that a
refused second driver can say whom it waited for. On network file systems ``flock`` is
only as good as the server's lock support (NFSv4: yes; some FUSE mounts: no).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"


class ResultsLockedError(RuntimeError):
    """Another process holds the results directory's lock; the message names it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe_holder(info: dict) -> str:
    where = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    since = f" since {info['started']}" if info.get("started") else ""
    stale = ""
    if (
        info.get("host") == socket.gethostname()
        and isinstance(info.get("pid"), int)
        and not _pid_alive(info["pid"])
    ):
        stale = " (that pid is gone: the lock is held by a process it started)"
    return f"{where}{since}{stale}"


class ResultsLock:
    """``with ResultsLock(results_dir): ...`` or ``acquire()`` / ``release()``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> ResultsLock:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResultsLockedError(
                f"{self.root} is in use by another landscape-sweep ({describe_holder(self.holder())}); "
                "wait for it to finish or stop it, then run this command again"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict:
        """What the lock file says about its last holder ({} when unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def is_held(self) -> bool:
        """True while some process holds the lock (probed with a shared, non-blocking flock)."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's own lock
        return False

    def __enter__(self) -> ResultsLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
