"""The one loss/accuracy kernel against a reference written out by hand (float64 log-softmax
and a counted argmax), for every reduction; exact equality where the arithmetic is the same."""

import pytest
import torch

from landscape.objective import classification_loss


def _reference(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy (float64) and hit (1 if the largest logit is the label)."""
    logp = logits.double() - logits.double().logsumexp(-1, keepdim=True)
    ce = -logp.gather(-1, y[..., None]).squeeze(-1)
    hits = torch.tensor(
        [
            float(row.tolist().index(max(row.tolist())) == int(t))
            for row, t in zip(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        ]
    )
    return ce, hits.reshape(y.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mean_and_sum_match_the_reference(dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 5, generator=g).to(dtype)
    y = torch.randint(5, (37,), generator=g)
    ce, hits = _reference(logits, y)
    loss, acc = classification_loss(logits, y)
    # the loss is float32 for float32 and bf16 logits (bf16 -> float32 is exact), float64 kept
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert loss.item() == pytest.approx(ce.mean().item(), rel=tol)
    assert acc.item() == hits.mean().item()
    total, correct = classification_loss(logits, y, reduction="sum")
    assert total.item() == pytest.approx(ce.sum().item(), rel=tol)
    assert correct.item() == hits.sum().item()


def test_members_layout_is_each_member_alone():
    """Packed logits (N, K, C) with labels (K, N): member k's numbers are those of its own
    (N, C) slice, bit for bit (the same per-example losses, averaged over the same axis)."""
    g = torch.Generator().manual_seed(1)
    K, N, C = 3, 11, 4
    logits = torch.randn(N, K, C, generator=g)
    y = torch.randint(C, (K, N), generator=g)
    loss, acc = classification_loss(logits, y, reduction="members")
    assert loss.shape == acc.shape == (K,)
    for k in range(K):
        ce, hits = _reference(logits[:, k], y[k])
        assert loss[k].item() == pytest.approx(ce.mean().item(), rel=1e-6)
        assert acc[k].item() == hits.mean().item()


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, members, got 'max'"):
        classification_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "max")
