"""Record-level DP-SGD (Abadi et al. 2016) inside the local trainer.

    stream = poisson_batches(data, batch_size=8, seed=s, pad_id=0)
    loss, tokens, seen = private_gradients(model, params, next(stream), dp, expected=8, gen)

Each step samples every local example independently with probability q = batch / N
(Poisson sampling, what the accountant assumes), computes each sampled example's gradient
on its own, clips it to L2 norm C, sums, adds N(0, (z C)^2) to every coordinate and
divides by the expected batch size q N. The participant composes one
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per step it ran into its own ledger
(``zenfed.privacy.dp``); the epsilon is per record of that participant's data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from zenfed.data.examples import TokenizedExample
from zenfed.train.batching import Batch, collate
from zenfed.train.loss import loss_sum


@dataclass(frozen=True)
class RecordDP:
    """Per-example clipping bound and noise multiplier of DP-SGD."""

    clip_norm: float
    noise_multiplier: float


def poisson_batches(
    examples: Sequence[TokenizedExample], batch_size: int, seed: int, pad_id: int
) -> Iterator[Batch | None]:
    """Endless Poisson-sampled batches (None when a step samples no example)."""
    gen = torch.Generator().manual_seed(seed)
    q = min(1.0, batch_size / len(examples))
    while True:
        chosen = (torch.rand(len(examples), generator=gen) < q).nonzero().flatten().tolist()
        yield collate([examples[i] for i in chosen], pad_id) if chosen else None


def sampling_rate(batch_size: int, num_examples: int) -> float:
    """q = batch / N (at most 1)."""
    return min(1.0, batch_size / num_examples)


def private_gradients(
    model: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    batch: Batch | None,
    dp: RecordDP,
    expected: float,
    gen: torch.Generator,
) -> tuple[float, int, int]:
    """Set ``params``' gradients to the clipped, noised mean of per-example gradients.

    Returns the batch's token-summed loss, its labelled tokens and its example count.
    """
    names = list(params)
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_total, tokens, count = 0.0, 0, 0
    if batch is not None:
        count = int(batch["input_ids"].shape[0])
        for i in range(count):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            s, n = loss_sum(model, one)
            grads = torch.autograd.grad(s / max(1, n), [params[k] for k in names])
            norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
            scale = min(1.0, dp.clip_norm / norm) if norm > 0 else 1.0
            for k, g in zip(names, grads, strict=True):
                total[k].add_(g, alpha=scale)
            loss_total += float(s.detach())
            tokens += n
    std = dp.noise_multiplier * dp.clip_norm
    for k, p in params.items():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
        p.grad = (total[k] + noise) / expected
    return loss_total, tokens, count
