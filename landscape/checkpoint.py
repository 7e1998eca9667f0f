"""Per-variant checkpoint files for re-analysis: plain tensors, loaded with ``weights_only=True``.

A file holds one member's parameters and buffers at the checkpoint the metrics used, and the
variant as canonical JSON; nothing in it is an arbitrary pickle, so loading a file from
someone else's results directory cannot run code.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from landscape.functional import Stack, unstack
from landscape.pack import TrainedPack
from landscape.variant import Variant, canonical_json


def save_checkpoints(pack: TrainedPack, directory: Path | str) -> list[Path]:
    """Write ``<variant_id>.pt`` for every member that did not diverge (atomically: temporary
    name, then rename). A diverged member has no model worth keeping: the engine zeroes it.

    The file is serialised in memory and written by Python, so a full disk raises ``OSError``
    (ENOSPC) and leaves no temporary file; ``torch.save`` writing to the path itself reports it
    as ``RuntimeError: ... unexpected pos``, which no caller can tell from a bug."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    alive = pack.alive.tolist()
    for k, v in enumerate(pack.variants):
        if not alive[k]:
            continue
        params, buffers = unstack(pack.final, k)
        payload = {
            "variant": canonical_json(v),
            "params": {n: t.detach().cpu().clone() for n, t in params.items()},
            "buffers": {n: t.detach().cpu().clone() for n, t in buffers.items()},
        }
        path = directory / f"{v.variant_id}.pt"
        tmp = directory / f".{v.variant_id}.pt.tmp"
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        try:
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[Variant, Stack]:
    """The variant and its parameters as a stack of one (``weights_only=True``: no code runs)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    variant = Variant.from_dict(json.loads(payload["variant"]))
    stack = Stack(
        {n: t.unsqueeze(0) for n, t in payload["params"].items()},
        {n: t.unsqueeze(0) for n, t in payload["buffers"].items()},
    )
    return variant, stack
