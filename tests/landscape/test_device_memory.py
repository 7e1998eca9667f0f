"""What a process may still allocate on a CUDA device, from the allocator's figures (faked here:
no GPU needed): the device's free memory plus this process's cached blocks, and no more than a
per-process cap allows."""

import torch

from landscape.pack import free_device_memory

GB = 2**30


def _fake_cuda(monkeypatch, free, total, reserved, allocated, fraction=None):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    if fraction is None:
        monkeypatch.delattr(torch.cuda, "get_per_process_memory_fraction", raising=False)
    else:
        monkeypatch.setattr(
            torch.cuda, "get_per_process_memory_fraction", lambda device=None: fraction
        )


def test_free_memory_counts_the_allocators_cached_blocks(monkeypatch):
    _fake_cuda(monkeypatch, free=50 * GB, total=140 * GB, reserved=20 * GB, allocated=5 * GB)
    assert free_device_memory(torch.device("cuda")) == 65 * GB  # 50 free + 15 cached


def test_a_per_process_cap_plans_for_a_smaller_card(monkeypatch):
    """An 80 GB card planned on a 140 GB one: the cap, less what is allocated, decides."""
    _fake_cuda(monkeypatch, 130 * GB, 140 * GB, 10 * GB, 5 * GB, fraction=80 / 140)
    assert free_device_memory(torch.device("cuda")) == 75 * GB
    _fake_cuda(monkeypatch, 130 * GB, 140 * GB, 90 * GB, 85 * GB, fraction=80 / 140)
    assert free_device_memory(torch.device("cuda")) == 0
