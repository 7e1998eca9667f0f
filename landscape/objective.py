"""The task's objective: cross-entropy and correct predictions of class logits, in one place.

Training (vmapped, member by member and in the packed layout), evaluation, the loss of one
member that Hessians and gradient statistics differentiate, surfaces and Bezier curves all
score logits with :func:`classification_loss`, so a new task kind (a per-token language-model
loss, say) is one change here. The loss is computed in :func:`loss_precision`; it carries no
weight-decay term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "members")


def loss_precision(t: Tensor) -> Tensor:
    """``t`` in the precision a loss is computed in: float32 for bf16 or float16 (autocast)
    activations, float64 kept as float64 (a float64 stack is float64 end to end)."""
    return t if t.dtype == torch.float64 else t.float()


def classification_loss(
    logits: Tensor, y: Tensor, reduction: str = "mean", accuracy: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Cross-entropy of ``logits`` against labels ``y`` and the predictions that were right.

    - ``mean``: logits (N, C), y (N,) -> (mean cross-entropy, fraction correct), 0-dim;
    - ``sum``: the same shapes -> (summed cross-entropy, number correct), for chunked means;
    - ``members``: the packed layout, logits (N, K, C), y (K, N) -> each member's mean
      cross-entropy and fraction correct, (K,) each.

    The cross-entropy is in :func:`loss_precision` (float32 under bf16 autocast, float64 for
    float64 logits); the correct count is a float32 (its argmax is that of ``logits``, which
    the cast does not change). Only the cross-entropy carries a gradient. Without
    ``accuracy`` the second value is None (what a loss alone costs: four kernels fewer).
    """
    if reduction == "members":
        losses = F.cross_entropy(loss_precision(logits).permute(0, 2, 1), y.T, reduction="none")
        acc = (logits.argmax(-1) == y.T).float().mean(0) if accuracy else None
        return losses.mean(0), acc
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    loss = F.cross_entropy(loss_precision(logits), y, reduction=reduction)
    if not accuracy:
        return loss, None
    hits = (logits.argmax(-1) == y).float()
    return loss, hits.mean() if reduction == "mean" else hits.sum()
