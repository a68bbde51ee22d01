"""Token-summed causal LM loss, so that micro-batches and participants add up exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zenfed.data.examples import IGNORE_INDEX
from zenfed.train.batching import Batch


def loss_sum(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    flat, targets = _shifted(logits, batch["labels"])
    total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((targets != IGNORE_INDEX).sum())


def loss_per_example(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss_sum``'s, row by row: each example's summed next-token cross-entropy over
    its labelled positions, and their count (both of shape [examples])."""
    flat, targets = _shifted(logits, labels)
    each = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return each.view(targets.shape).sum(1), (targets != IGNORE_INDEX).sum(1)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) at position t predict token t + 1: the flat float logits of
    positions 0..T-2 and the targets 1..T-1 (B, T-1)."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:]
