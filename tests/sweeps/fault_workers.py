"""A PackWorker with faults on request, for the fault tests (handed to ``run_sweep(worker_cls=...)``).

The test and the worker processes talk through files in ``signal_dir``:

- a pack with a member of width ``hold_width`` writes ``hold-<pid>`` (its content: the Ray
  node id) and waits, up to a minute, to be killed; once ``killed`` exists (the test writes it
  just before ``SIGKILL``), such packs run normally;
- a pack with a member of width ``poison_width`` kills its own process with ``SIGKILL``, every time;
- every pack writes ``ran-<node id>-<pid>`` as it starts; on a node whose processes have
  ``HOLD_ON_THIS_NODE=1`` in their environment (set for its ``ray start``), every pack holds as
  ``hold_width``'s do, so that the test knows a pack is in flight there when it kills the node.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import ray

from sweeps.workers import PackWorker


class FaultyWorker(PackWorker):
    def __init__(
        self,
        device: str,
        threads: int,
        signal_dir: str,
        hold_width: int = -1,
        poison_width: int = -1,
    ):
        super().__init__(device, threads)
        self.signals = Path(signal_dir)
        self.hold_width, self.poison_width = hold_width, poison_width

    def run(self, variants, metrics, checkpoint_dir=None):
        widths = {v.model.width for v in variants}
        node = ray.get_runtime_context().get_node_id()
        (self.signals / f"ran-{node}-{os.getpid()}").touch()
        held = self.hold_width in widths or os.environ.get("HOLD_ON_THIS_NODE") == "1"
        if not held and (self.signals / "await-hold").exists():
            deadline = time.monotonic() + 120
            while not any(self.signals.glob("hold-*")) and time.monotonic() < deadline:
                time.sleep(0.1)
        if self.poison_width in widths:
            (self.signals / f"poisoned-{os.getpid()}").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if held and not (self.signals / "killed").exists():
            (self.signals / f"hold-{os.getpid()}").write_text(node)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.1)
        return super().run(variants, metrics, checkpoint_dir)
