"""NVIDIA's Multi-Process Service (MPS) for the embedded Ray instance: several workers on one GPU.

With ``ray.gpus_per_worker`` a fraction (``1/N``), N workers share each GPU; without MPS the
GPU time-slices their processes, so only one pack's kernels run at a time. Under MPS their
kernels run concurrently, which is what small packs (the taxonomy preset's 5 seeds) need to
fill a large GPU. ``ray.mps=true`` starts the MPS control daemon for the sweep's own local Ray
instance (``nvidia-cuda-mps-control -d``, with a pipe and log directory of its own, which the
Ray workers inherit through ``CUDA_MPS_PIPE_DIRECTORY``) and stops it (``quit``) when the
sweep ends. On a cluster, start the daemon on each node before ``ray start`` instead
(``docs/cluster.md``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from landscape.variant import ConfigError

CONTROL = "nvidia-cuda-mps-control"
ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


def check_mps_available() -> str:
    """The path of the MPS control binary; a one-line ``ConfigError`` when it is missing."""
    control = shutil.which(CONTROL)
    if control is None:
        raise ConfigError(
            f"ray.mps=true needs {CONTROL} (NVIDIA's driver utilities) on PATH; "
            "install them or set ray.mps=false"
        )
    return control


@contextlib.contextmanager
def mps_daemon(log: Callable[[str], None] = print) -> Iterator[Path]:
    """The MPS control daemon for the block, its pipe directory yielded; this process's
    environment names it (so a Ray instance started inside inherits it) until the block ends,
    when the daemon is told to quit and its directories are removed. A missing binary or a
    daemon that does not start is a one-line ``ConfigError``."""
    control = check_mps_available()
    # a short path: the daemon's Unix sockets live in the pipe directory (108-byte limit)
    root = Path(tempfile.mkdtemp(prefix="landscape-mps-"))
    dirs = dict(zip(ENV, (root / "pipe", root / "log")))
    for d in dirs.values():
        d.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
    done = subprocess.run([control, "-d"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise ConfigError(f"ray.mps=true: {CONTROL} -d did not start the daemon: {reason}")
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({k: str(v) for k, v in dirs.items()})
    log(f"MPS daemon started (pipe directory {dirs['CUDA_MPS_PIPE_DIRECTORY']})")
    try:
        yield dirs["CUDA_MPS_PIPE_DIRECTORY"]
    finally:
        subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)
