"""The embedded Ray instance goes with its driver, however the driver ends.

A driver killed with SIGKILL runs no clean-up: Ray's GCS and raylet notice soon, but helpers
the raylet started (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) linger for minutes.
:func:`reap_with_driver` starts a small watcher process holding the read end of a pipe whose
write end only the driver has: when the driver is gone, however it went, the read returns
end-of-file and the watcher ends the instance's processes, which it has kept a list of while
the driver lived (processes under the driver whose command line names the instance's session
directory, and everything they started). Processes are matched by pid *and* start time, so a
pid the system has given to someone else since is never touched.

    python -m sweeps.reaper DRIVER_PID SESSION_DIR    # stdin: the pipe; not for people
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import psutil

SNAPSHOT_S = 1.0  # how often the list of the instance's processes is refreshed
GRACE_S = 3.0  # after SIGTERM, before SIGKILL


def reap_with_driver() -> subprocess.Popen | None:
    """Start the watcher for the Ray instance this process has just started (``ray.init``)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    read_end, write_end = os.pipe()  # both close-on-exec: no Ray process inherits the write end
    watcher = subprocess.Popen(
        [sys.executable, "-m", "sweeps.reaper", str(os.getpid()), node.get_session_dir_path()],
        stdin=read_end,
        start_new_session=True,  # not in the driver's process group: a Ctrl-C does not reach it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    _write_ends.append(write_end)  # held open until this process ends
    return watcher


_write_ends: list[int] = []


def _instance_processes(driver: int, session_dir: str) -> dict[int, float]:
    """pid -> start time of the processes under ``driver`` that belong to the instance."""
    try:
        below = psutil.Process(driver).children(recursive=True)
    except psutil.Error:
        return {}
    me = os.getpid()
    found: dict[int, float] = {}
    for proc in below:
        try:
            if proc.pid == me or session_dir not in " ".join(proc.cmdline()):
                continue
            for p in [proc, *proc.children(recursive=True)]:
                found[p.pid] = p.create_time()
        except psutil.Error:
            continue
    return found


def _end(processes: dict[int, float]) -> None:
    alive = []
    for pid, started in processes.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != started:
                continue  # the pid was given to another process
            proc.send_signal(signal.SIGTERM)
            alive.append(proc)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            continue


def watch(driver: int, session_dir: str) -> None:
    known: dict[int, float] = {}
    while True:
        readable, _, _ = select.select([sys.stdin.fileno()], [], [], SNAPSHOT_S)
        if readable and not os.read(sys.stdin.fileno(), 1024):
            break  # end of file: the driver is gone
        known.update(_instance_processes(driver, session_dir))
        known = {pid: t for pid, t in known.items() if psutil.pid_exists(pid)}
    time.sleep(0.5)  # what ends by itself (the driver's own shutdown) need not be signalled
    _end(known)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
