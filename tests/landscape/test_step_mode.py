"""``train.pack_step=auto`` picks what the benchmarks measured fastest, decided at the
thresholds: resolving the mode reads only the device's kind and the model's FLOPs, so a CUDA
device object is enough (nothing runs on it)."""

import pytest
import torch

from landscape.models import model_forward_flops
from landscape.train import LOOP_FLOPS, step_mode
from landscape.variant import ModelSpec, OptimSpec, TrainSpec, Variant

CIFAR = ((3, 32, 32), 10)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _resnet(width: int, batch: int = 128, pack_step: str = "auto") -> Variant:
    return Variant(
        model=ModelSpec("resnet18", width=width, batch_norm=True),
        optim=OptimSpec(batch_size=batch),
        train=TrainSpec(pack_step=pack_step),
    )


@pytest.mark.parametrize(
    ("width", "device", "expected"),
    [
        # H200: packed 3,400 model-steps/s, vmap 2,000; packed is not picked on a GPU (a
        # diverging member reached its pack-mates there, see landscape.train.step_mode)
        (4, CUDA, "vmap"),
        (16, CUDA, "vmap"),
        (32, CUDA, "vmap"),  # vmap below the threshold; loop 394 against packed 718
        (64, CUDA, "loop"),  # loop 277, packed 237
        (128, CUDA, "loop"),
        (4, CPU, "packed"),
        (128, CPU, "packed"),
    ],
)
def test_auto_follows_the_measured_table(width, device, expected):
    assert step_mode(_resnet(width), *CIFAR, device) == expected


def test_the_gpu_threshold_is_one_members_forward_flops_per_batch():
    """Just under LOOP_FLOPS forward FLOPs per member batch is vmap, at it loop: the batch
    size that crosses it for a width-32 ResNet18 decides, not the width alone."""
    per_example = model_forward_flops(ModelSpec("resnet18", width=32, batch_norm=True), *CIFAR)
    at = int(-(-LOOP_FLOPS // per_example))  # the smallest batch at or past the threshold
    assert step_mode(_resnet(32, batch=at - 1), *CIFAR, CUDA) == "vmap"
    assert step_mode(_resnet(32, batch=at), *CIFAR, CUDA) == "loop"


def test_an_explicit_mode_is_kept():
    for mode in ("vmap", "loop", "packed"):
        assert step_mode(_resnet(64, pack_step=mode), *CIFAR, CUDA) == mode


def test_a_model_the_packed_layout_cannot_hold_runs_members_in_turn_on_a_cpu(monkeypatch):
    import landscape.train as train

    monkeypatch.setattr(train, "_packed_layout", lambda *a: "")
    assert step_mode(_resnet(8), *CIFAR, CPU) == "loop"


def test_a_transformer_on_a_cpu_runs_members_in_turn():
    """The packed layout refuses attention, and vmap measured up to 1.7x loop's time."""
    v = Variant(model=ModelSpec("transformer", width=16, depth=1, heads=2), optim=OptimSpec())
    assert step_mode(v, (3,), 7, CPU, vocab=8) == "loop"


@pytest.mark.parametrize(
    ("members", "expected"),
    [(1, "loop"), (2, "loop"), (3, "packed"), (16, "packed"), (0, "packed")],
)
def test_small_packs_run_member_by_member_on_a_cpu(members, expected):
    """At one or two members ``loop`` measured fastest on a CPU (a pack of one is a plain
    module's step), from four on ``packed`` (``landscape.train.step_mode``); 0: not given."""
    assert step_mode(_resnet(4), *CIFAR, CPU, members=members) == expected
    assert step_mode(_resnet(4), *CIFAR, CUDA, members=members) == "vmap"  # the GPU's rule


@pytest.mark.parametrize(
    ("members", "expected"), [(1, "loop"), (2, "packed"), (3, "packed"), (0, "packed")]
)
def test_a_model_in_member_rows_packs_from_two_members_on_a_cpu(members, expected):
    """An MLP without BatchNorm packs in member rows, which at two members measured faster
    than members in turn (1.26-1.43x a plain step against 1.08-1.28x); a pack of one stays
    a plain module's step. With BatchNorm it keeps channels side by side: loop up to two."""
    mlp = Variant(model=ModelSpec("mlp", width=32), optim=OptimSpec(batch_size=16))
    assert step_mode(mlp, (1, 8, 8), 10, CPU, members=members) == expected
    bn = Variant(model=ModelSpec("mlp", width=32, batch_norm=True), optim=OptimSpec())
    assert step_mode(bn, (1, 8, 8), 10, CPU, members=2) == "loop"
