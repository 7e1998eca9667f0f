"""A worker that records when it runs each pack and on which GPU share, for the test of
several workers on one GPU (handed to ``run_sweep(worker_cls=...)``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray

from sweeps.workers import NoopPackWorker


class SleepyWorker(NoopPackWorker):
    """Each pack takes ``seconds`` and writes ``{pid, gpus, start, end}`` to ``log_dir``. A
    worker's first pack first waits (up to a minute) until ``barrier`` workers have each begun
    one: it ends only once that many packs were in flight at the same time, however long the
    workers took to start."""

    def __init__(
        self, device: str, threads: int, log_dir: str, seconds: float = 0.2, barrier: int = 1
    ):
        super().__init__(device, threads)
        self.log_dir, self.seconds, self.barrier = Path(log_dir), seconds, barrier
        self.first = True

    def run(self, variants, metrics, checkpoint_dir=None):
        start = time.time()
        if self.first:
            self.first = False
            (self.log_dir / f"started-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while len(list(self.log_dir.glob("started-*"))) < self.barrier:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        time.sleep(self.seconds)
        record = {
            "pid": os.getpid(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "mps_pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
            "start": start,
            "end": time.time(),
        }
        (self.log_dir / f"{variants[0].variant_id}.json").write_text(json.dumps(record))
        return super().run(variants, metrics, checkpoint_dir)
