"""Record-level DP-SGD (Abadi et al. 2016) inside the local trainer.

    stream = poisson_batches(data, batch_size=8, seed=s, pad_id=0)
    loss, tokens, seen = private_gradients(model, params, next(stream), dp, expected=8, gen)

Each step samples every local example independently with probability q = batch / N
(Poisson sampling, what the accountant assumes), computes each sampled example's gradient
(Opacus' per-sample gradient hooks: one batched forward and backward pass), clips it to
L2 norm C, sums, adds N(0, (z C)^2) to every coordinate and
divides by the expected batch size q N. The participant composes one
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per step it ran into its own ledger
(``zenfed.privacy.dp``); the epsilon is per record of that participant's data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from zenfed.data.examples import TokenizedExample
from zenfed.noise import gaussian
from zenfed.train.batching import Batch, collate
from zenfed.train.loss import loss_per_example


@dataclass(frozen=True)
class RecordDP:
    """Per-example clipping bound and noise multiplier of DP-SGD."""

    clip_norm: float
    noise_multiplier: float
    secure: bool = False  # noise from zenfed.noise's secure stream, not ``gen``


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
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    loss_total, tokens, count = 0.0, 0, 0
    if batch is not None:
        grads, loss_total, tokens = per_example_gradients(model, params, batch)
        count = int(batch["input_ids"].shape[0])
        squares = [g.double().flatten(1).pow(2).sum(1) for g in grads.values()]
        norms = torch.stack(squares).sum(0).sqrt()
        scale = torch.clamp(dp.clip_norm / norms.clamp(min=1e-30), max=1.0)
        for k, g in grads.items():
            total[k] = torch.einsum("b,b...->...", scale.to(g.dtype), g)
    std = dp.noise_multiplier * dp.clip_norm
    for k, p in params.items():
        if dp.secure:
            noise = torch.from_numpy(gaussian(tuple(p.shape), std, secure=True)).to(p.dtype)
        else:
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * std
        p.grad = (total[k] + noise) / expected
    return loss_total, tokens, count


def per_example_gradients(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], batch: Batch
) -> tuple[dict[str, torch.Tensor], float, int]:
    """Each example's gradient of its own mean token loss, for every parameter of
    ``params`` (shape [examples, *parameter]), from one batched forward and backward
    pass through Opacus' per-sample gradient hooks; and the batch's summed loss and
    labelled tokens."""
    from opacus.grad_sample import GradSampleModule

    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    try:
        logits = wrapped(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sums, counts = loss_per_example(logits.logits, batch["labels"])
        (sums / counts.clamp(min=1)).sum().backward()
        grads = {}
        for k, p in params.items():
            sample = getattr(p, "grad_sample", None)
            if sample is None:
                raise RuntimeError(f"Opacus computed no per-example gradient for {k}")
            grads[k] = sample.detach()
    finally:
        wrapped.remove_hooks()
        for p in params.values():
            vars(p).pop("grad_sample", None)  # Opacus' attribute, gone with its hooks
            p.grad = None
    return grads, float(sums.detach().sum()), int(counts.sum())
