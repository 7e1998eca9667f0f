import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

# Two cores are shared by every test process; torch's own thread pool would oversubscribe them.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A tmpfs of ``size`` (``4k``, ``4m``) at ``mount`` (created if absent), unmounted after:
    a disk that fills for real (ENOSPC from the kernel). Skips the test where mounting is not
    allowed."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def tiny_variant():
    from landscape import DataSpec, ModelSpec, OptimSpec, TrainSpec, Variant

    def make(**kw):
        base = dict(
            model=ModelSpec("mlp", width=8, depth=1),
            data=DataSpec("synthetic", n_train=96, n_test=48, n_features=6, n_classes=3),
            optim=OptimSpec(lr=0.1, batch_size=16),
            train=TrainSpec(epochs=2),
            seed=0,
        )
        base.update(kw)
        return Variant(**base)

    return make
