import os

import pytest
import torch

# Two cores are shared by every test process; torch's own thread pool would oversubscribe them.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


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
