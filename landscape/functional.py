"""Models as pure functions of stacked parameters, the shared currency of training and metrics.

A pack of K models of one architecture is held as a :class:`Stack`: every parameter and
buffer tensor carries a leading member dimension K (``torch.func.stack_module_state``).
:class:`FunctionalNet` evaluates ONE member given its (unstacked) parameters and buffers;
callers ``torch.func.vmap`` it over the member dimension. Conventions every metric follows:

- ``params`` / ``buffers``: ``dict[str, Tensor]``; stacked ones have shape ``(K, *shape)``.
- data for a pack: ``x`` of shape ``(K, N, *input_shape)``, ``y`` of shape ``(K, N)``
  (use ``Tensor.expand`` when members share inputs: label noise makes labels per member).
- the loss is mean cross-entropy with no weight-decay term.
- evaluation is in eval mode (BatchNorm uses running statistics) unless ``train=True``.
- precision follows the stack: float32 (bf16 under autocast, losses in float32), or float64
  throughout for a stack made float64 (``{n: p.double() ...}``; equivalence tests use it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

# loss_precision lives with the objective; many modules import it from here
from landscape.objective import classification_loss, loss_precision  # noqa: F401

Params = dict[str, Tensor]


@dataclass
class Stack:
    """The state of K stacked models: parameters and buffers with a leading member dim."""

    params: Params
    buffers: Params

    @property
    def members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def member(self, k: int) -> Stack:
        """Member k as a stack of one (leading dim kept)."""
        return self.select([k])

    def select(self, index: Sequence[int] | Tensor) -> Stack:
        idx = torch.as_tensor(
            index, dtype=torch.long, device=next(iter(self.params.values())).device
        )
        return Stack(
            {n: p.index_select(0, idx) for n, p in self.params.items()},
            {n: b.index_select(0, idx) for n, b in self.buffers.items()},
        )

    def clone(self) -> Stack:
        return Stack(
            {n: p.detach().clone() for n, p in self.params.items()},
            {n: b.detach().clone() for n, b in self.buffers.items()},
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Stack:
        """On ``device``; with ``dtype``, floating-point tensors in it too (counters such as
        BatchNorm's ``num_batches_tracked`` keep their integer type)."""

        def move(t: Tensor) -> Tensor:
            return t.to(device, dtype if dtype is not None and t.is_floating_point() else None)

        return Stack(
            {n: move(p) for n, p in self.params.items()},
            {n: move(b) for n, b in self.buffers.items()},
        )

    @staticmethod
    def concat(stacks: Sequence[Stack]) -> Stack:
        first = stacks[0]
        return Stack(
            {n: torch.cat([s.params[n] for s in stacks]) for n in first.params},
            {n: torch.cat([s.buffers[n] for s in stacks]) for n in first.buffers},
        )


class FunctionalNet:
    """Pure-function view of an ``nn.Module`` architecture (the module's own tensors are unused).

    Every model in ``landscape.models`` accepts ``forward(x, features=False)``; with
    ``features=True`` it returns the penultimate representation instead of logits.
    """

    def __init__(self, module: nn.Module):
        # A private copy on the meta device: the template never holds real weights.
        self.module = copy.deepcopy(module).to("meta")
        self.param_names = [n for n, _ in module.named_parameters()]
        self.buffer_names = [n for n, _ in module.named_buffers()]
        self._widest: dict[tuple[int, ...], int] = {}  # widest_activation, per input shape

    def _call(
        self, params: Params, buffers: Params, x: Tensor, train: bool, features: bool
    ) -> Tensor:
        self.module.train(train)
        return functional_call(
            self.module, (params, buffers), (x,), {"features": features}, strict=True
        )

    def logits(self, params: Params, buffers: Params, x: Tensor, train: bool = False) -> Tensor:
        """Logits of one member: ``x`` (N, *input_shape) -> (N, C)."""
        return self._call(params, buffers, x, train, features=False)

    def features(self, params: Params, buffers: Params, x: Tensor) -> Tensor:
        """Penultimate features of one member, eval mode: (N, *input_shape) -> (N, D)."""
        return self._call(params, buffers, x, train=False, features=True)

    def loss(
        self, params: Params, buffers: Params, x: Tensor, y: Tensor, train: bool = False
    ) -> Tensor:
        """Mean cross-entropy of one member (no weight-decay term)."""
        return classification_loss(self.logits(params, buffers, x, train), y, accuracy=False)[0]

    def loss_fn(self, buffers: Params, x: Tensor, y: Tensor) -> Callable[[Params], Tensor]:
        """``params -> loss`` for one member with buffers and data closed over (eval mode)."""
        return lambda params: self.loss(params, buffers, x, y)

    def widest_activation(self, input_shape: tuple[int, ...]) -> int:
        """Elements of the largest module output for ONE example (counted on the meta device,
        once per input shape): what bounds how many examples and parameter sets one batched
        call may hold before a kernel's tensor outgrows 32-bit indexing (:data:`INDEX_LIMIT`)."""
        if input_shape not in self._widest:
            self.module.eval()  # one example: BatchNorm must not ask for batch statistics
            self._widest[input_shape] = max(leaf_output_sizes(self.module, input_shape, 1))
        return self._widest[input_shape]


class BoundModule:
    """A private copy of a :class:`FunctionalNet`'s architecture, called with one member's
    tensors set into its modules by hand: ``torch.func.functional_call`` without its per-call
    cost (it re-derives every module path and swaps with guards and a context manager: about
    three times a small MLP's forward on a CPU). The same module forward on the same tensors,
    so the same kernels and numbers. ``module`` is a copy of ``net.module`` to call instead
    (the packed layout's, whose layers are rewritten); the tensors of the last call stay set
    in it until the next (the caller's own, no copies). An architecture with a parameter or
    buffer registered twice (tied) is refused: use :meth:`FunctionalNet.logits` there."""

    def __init__(self, net: FunctionalNet, module: nn.Module | None = None):
        self.module = copy.deepcopy(net.module) if module is None else module
        self.names = (net.param_names, net.buffer_names)
        self.training: bool | None = None  # the mode the copy was last put in
        named = dict(self.module.named_modules())

        def slot(name: str, table: str) -> tuple[dict, str]:
            owner, _, leaf = name.rpartition(".")
            return getattr(named[owner], table), leaf

        self.param_slots = [slot(n, "_parameters") for n in net.param_names]
        self.buffer_slots = [slot(n, "_buffers") for n in net.buffer_names]
        every = len(list(self.module.named_parameters(remove_duplicate=False)))
        every += len(list(self.module.named_buffers(remove_duplicate=False)))
        if every != len(self.param_slots) + len(self.buffer_slots):
            raise ValueError("BoundModule: the architecture ties parameters or buffers")

    def __call__(self, params: Params, buffers: Params, x: Tensor, train: bool) -> Tensor:
        """The module's output for ``x`` with these parameters and buffers (every name of
        the architecture; BatchNorm statistics update in place in ``buffers`` when
        ``train``): one member's logits (N, C) for x (N, *input_shape)."""
        if train is not self.training:
            self.module.train(train)
            self.training = train
        for (table, leaf), name in zip(self.param_slots, self.names[0]):
            table[leaf] = params[name]
        for (table, leaf), name in zip(self.buffer_slots, self.names[1]):
            table[leaf] = buffers[name]
        return self.module(x)


def example_input(
    module: nn.Module, input_shape: tuple[int, ...], batch: int, device: torch.device | str
) -> Tensor:
    """A dummy batch (batch, *input_shape) of the input kind ``module`` reads: int64 token id 0
    for a model with a ``vocab`` (> 0), else float zeros. What meta-device passes feed."""
    if getattr(module, "vocab", 0):
        return torch.zeros(batch, *input_shape, dtype=torch.long, device=device)
    return torch.zeros(batch, *input_shape, device=device)


# A model of at most this many parameter and buffer elements is probed for shapes on the CPU
# (a copy with uninitialised tensors: 64 MB at most), larger ones on the meta device. A
# process's first meta-device pass imports torch's decompositions and dynamo (about 900
# modules: 1.3 s on this project's 2-core x86_64 CPU), which the driver would pay for every
# sweep; a CPU pass of a few examples through a small model takes milliseconds.
PROBE_ON_CPU_ELEMENTS = 2**24


def probe_device(module: nn.Module) -> tuple[nn.Module, str]:
    """``module`` (on the meta device) for a pass that only reads shapes: an uninitialised CPU
    copy when it is small (:data:`PROBE_ON_CPU_ELEMENTS`), else itself on the meta device."""
    elements = sum(t.numel() for t in (*module.parameters(), *module.buffers()))
    if elements <= PROBE_ON_CPU_ELEMENTS:
        return copy.deepcopy(module).to_empty(device="cpu"), "cpu"
    return module, "meta"


def _sizes(module: nn.Module, input_shape: tuple[int, ...], batch: int, device: str) -> list[int]:
    sizes: list[int] = []

    def count(_module, _inputs, output) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel())

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            module(example_input(module, input_shape, batch, device))
    finally:
        for h in handles:
            h.remove()
    return sizes


def leaf_output_sizes(module: nn.Module, input_shape: tuple[int, ...], batch: int) -> list[int]:
    """Elements of every leaf module's output for one batch, in call order, from a pass that
    computes nothing of use (:func:`probe_device`; ``module`` is on the meta device): on
    the CPU, passes of 2 and 3 examples, extrapolated to ``batch`` (every output of these
    models grows with the batch by a fixed number of elements per example, which the test
    checks against the meta device's count), or one pass of ``batch`` when it is at most 3.
    What memory estimates and the 32-bit indexing bound count."""
    probe, device = probe_device(module)
    if device == "meta" or batch <= 3:
        return _sizes(probe, input_shape, batch, device) or [1]
    two, three = _sizes(probe, input_shape, 2, device), _sizes(probe, input_shape, 3, device)
    return [a + (b - a) * (batch - 2) for a, b in zip(two, three, strict=True)] or [1]


# Elements one tensor of a batched call may hold: CUDA kernels index with 32-bit math and
# refuse (or split) larger ones, which vmap over pairs and grid points reaches at width 128.
INDEX_LIMIT = 2**31 - 1


def examples_per_call(
    net: FunctionalNet, input_shape: tuple[int, ...], sets: int, want: int
) -> int:
    """``want`` examples per forward pass, or fewer (at least 1) so that ``sets`` parameter
    sets batched together keep their widest activation under :data:`INDEX_LIMIT`."""
    return max(1, min(want, INDEX_LIMIT // (sets * net.widest_activation(tuple(input_shape)))))


def init_stack(
    build: Callable[[], nn.Module], seeds: Sequence[int], device: torch.device | str
) -> tuple[FunctionalNet, Stack]:
    """Build one model per seed (initialised under ``torch.manual_seed(seed)``) and stack them.

    The same seed gives the same initial weights whether a model is built alone or in a pack.
    """
    modules = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules.append(build())
    params, buffers = stack_module_state(modules)
    net = FunctionalNet(modules[0])
    stack = Stack(
        {n: p.detach().to(device) for n, p in params.items()},
        {n: b.detach().to(device) for n, b in buffers.items()},
    )
    return net, stack


def unstack(stack: Stack, k: int) -> tuple[Params, Params]:
    """Member k's own (unstacked) parameters and buffers."""
    return ({n: p[k] for n, p in stack.params.items()}, {n: b[k] for n, b in stack.buffers.items()})


def num_params(stack: Stack) -> int:
    """Trainable parameters per member."""
    return sum(p[0].numel() for p in stack.params.values())


# --- pytrees of stacked members: selection and flat views ------------------------------------


def take(tree: Any, index: Tensor) -> Any:
    """Members ``index`` of a stacked pytree (tensors, dicts, tuples, lists)."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, index.to(tree.device))
    if isinstance(tree, dict):
        return {k: take(v, index) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(take(v, index) for v in tree)
    raise TypeError(f"cannot index members of a {type(tree).__name__}")


def members(params: Params) -> int:
    return next(iter(params.values())).shape[0]


def flatten(tree: Params, start: int = 0) -> Tensor:
    """Concatenate a dict of tensors into one vector per leading index: (*lead, P)."""
    return torch.cat([t.flatten(start) for t in tree.values()], dim=start)


def unflatten(flat: Tensor, shapes: dict[str, torch.Size]) -> Params:
    """Inverse of :func:`flatten` for one vector per leading index: (*lead, P) -> dict."""
    lead = flat.shape[:-1]
    sizes = [math.prod(s) for s in shapes.values()]
    parts = flat.split(sizes, dim=-1)
    return {n: part.reshape(*lead, *s) for (n, s), part in zip(shapes.items(), parts)}


def member_shapes(params: Params) -> dict[str, torch.Size]:
    """Shapes of one member's parameters (the stacked dim dropped)."""
    return {n: p.shape[1:] for n, p in params.items()}
