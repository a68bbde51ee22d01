"""Evaluate the current adapter on held-out examples: token-weighted loss.

result = evaluate(model, participant.heldout, batch_size=8, pad_id=tok.pad_token_id)
result.loss  # mean next-token loss; results add up exactly across participants
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from zenfed.data.examples import TokenizedExample
from zenfed.model.adapter import set_adapter_state
from zenfed.tensors import Tensors
from zenfed.train.batching import sequential_batches
from zenfed.train.loss import loss_sum


@dataclass(frozen=True)
class EvalResult:
    """Sums, so that results of several participants combine into the union's loss."""

    loss_sum: float
    num_tokens: int
    num_examples: int

    @property
    def loss(self) -> float:
        """Mean loss per labelled token (nan when there were none)."""
        return self.loss_sum / self.num_tokens if self.num_tokens else math.nan


def evaluate(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> EvalResult:
    """Loss of ``model`` over every example once, without gradients."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in sequential_batches(examples, batch_size, pad_id):
            s, n = loss_sum(model, batch)
            total += float(s)
            tokens += n
    model.train(was_training)
    return EvalResult(total, tokens, len(examples))


def combine(results: Iterable[EvalResult]) -> EvalResult:
    """The result on the union of the examples behind ``results``."""
    rs = list(results)
    return EvalResult(
        sum(r.loss_sum for r in rs), sum(r.num_tokens for r in rs), sum(r.num_examples for r in rs)
    )


def adapter_loss(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> Callable[[Tensors], float]:
    """A function giving the loss over ``examples`` of ``model`` with an adapter's tensors
    loaded (what an evaluation gate judges candidates by). It loads them into ``model``:
    whoever uses the model next loads its own."""

    def loss(tensors: Tensors) -> float:
        set_adapter_state(model, tensors)  # type: ignore[arg-type]
        return evaluate(model, examples, batch_size, pad_id).loss

    return loss
