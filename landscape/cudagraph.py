"""Replaying a function from a CUDA graph: one launch instead of hundreds of tiny ones.

The models a loss-landscape sweep trains are small, so a packed step or a vmapped
Hessian-vector product is hundreds of kernels that each take a few microseconds; on a GPU the
host's cost of launching them is most of the time. :class:`CudaGraphed` records the kernels of
a call once (``torch.cuda.CUDAGraph``) and replays them for every later call with arguments of
the same shapes: the same kernels on the same data, without the launches.

Rules for the wrapped function (PyTorch's for graph capture): no host synchronisation (no
``.item()``, no data-dependent shapes, no boolean indexing), no CPU tensors, and every tensor
it reads that is not an argument must stay the same object (it is read in place at replay).
Arguments are copied into the graph's own input buffers on each call; results are returned as
copies. On a CPU, or when recording fails, calls run the function as is.

A function that reads tensors made by autograd (a retained graph, as for Hessian-vector
products by double backward) must run, be recorded and be replayed on the stream those tensors
were made on, since autograd runs a backward node on its forward's stream: pass that
``stream``, and call :meth:`CudaGraphed.reset` when the tensors it reads are replaced.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

__all__ = ["CudaGraphed"]


def _key(args: tuple) -> tuple:
    leaves, spec = tree_flatten(args)
    shapes = tuple(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x for x in leaves
    )
    return (str(spec), shapes)


def _clone(tree: Any) -> Any:
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


class CudaGraphed:
    """``fn`` replayed from one CUDA graph per distinct shape of its arguments.

    The first ``warmup`` calls of each shape run eagerly on a side stream (libraries choose
    their algorithms, the allocator settles); the next records the graph and replays it. So
    every call computes its result, the recording one included. ``max_graphs`` bounds the
    number of graphs kept (each holds its own memory pool); shapes beyond it run eagerly.
    ``stream``: the one stream every warm-up and recording runs on (default: a new side
    stream per warm-up call, PyTorch's capture stream for recording).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        warmup: int = 2,
        max_graphs: int = 4,
        stream: torch.cuda.Stream | None = None,
    ):
        self.fn, self.warmup, self.max_graphs, self.stream = fn, warmup, max_graphs, stream
        self.calls: dict[tuple, int] = {}
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Any, Any]] = {}
        self.failed = False

    def reset(self) -> None:
        """Forget the recorded graphs (and their memory): the next calls warm up and record
        again. For when the tensors ``fn`` reads besides its arguments were replaced."""
        self.calls.clear()
        self.graphs.clear()

    def __call__(self, *args: Any) -> Any:
        leaves = [x for x in tree_flatten(args)[0] if isinstance(x, torch.Tensor)]
        if self.failed or not leaves or leaves[0].device.type != "cuda":
            return self.fn(*args)
        key = _key(args)
        if key in self.graphs:
            return self._replay(key, args)
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if n <= self.warmup or len(self.graphs) >= self.max_graphs:
            return self._side_stream(args, leaves[0].device)
        if self._record(key, args):
            return self._replay(key, args)
        return self.fn(*args)

    def _side_stream(self, args: tuple, device: torch.device) -> Any:
        side, main = self.stream or torch.cuda.Stream(device), torch.cuda.current_stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.fn(*args)
        main.wait_stream(side)
        return out

    def _record(self, key: tuple, args: tuple) -> bool:
        static = _clone(args)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                out = self.fn(*static)
        except RuntimeError as err:  # nothing ran while recording: state is intact
            warnings.warn(
                f"CUDA graph recording failed, running eagerly from now on: {err}", stacklevel=3
            )
            torch.cuda.synchronize()
            self.failed = True
            return False
        self.graphs[key] = (graph, static, out)
        return True

    def _replay(self, key: tuple, args: tuple) -> Any:
        graph, static, out = self.graphs[key]
        for dst, src in zip(tree_flatten(static)[0], tree_flatten(args)[0], strict=True):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return _clone(out)
