"""Seeded batches of a participant's tokenized examples, padded on the right.

    for batch in batches(examples, batch_size=8, seed=s, pad_id=tok.pad_token_id): ...

Examples are drawn without replacement within an epoch; the order depends only on the
seed, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from zenfed.data.examples import IGNORE_INDEX, TokenizedExample

Batch = dict[str, torch.Tensor]


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """Pad to the longest example: input_ids, attention_mask, labels, each (B, T)."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(
    examples: Sequence[TokenizedExample], batch_size: int, seed: int, pad_id: int
) -> Iterator[Batch]:
    """An endless stream of batches: seeded shuffles, epoch after epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        if len(order) < batch_size:  # fewer examples than a batch: use them all each step
            yield collate([examples[i] for i in order], pad_id)


def sequential_batches(
    examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> Iterator[Batch]:
    """Each example exactly once, in order (for evaluation)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_id)
