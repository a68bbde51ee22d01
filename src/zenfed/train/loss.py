"""Token-summed causal LM loss, so that micro-batches and participants add up exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zenfed.data.examples import IGNORE_INDEX
from zenfed.train.batching import Batch


def loss_sum(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # logits: (B, T, V) predicts token t+1 from position t
    targets = batch["labels"][:, 1:]
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((targets != IGNORE_INDEX).sum())
