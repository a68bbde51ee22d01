"""The one local trainer: used by every participant, in simulation and deployment, and by
the centralized and local-only baselines.

    result = train_local(model, data, cfg, start_state, plan=StepPlan(seed=s, steps=5))
    result.delta        # trained adapter minus start_state: what the participant sends

AdamW over the adapter's parameters; gradient accumulation in micro-batches whose size a
declared memory budget picks (halved and retried on out-of-memory); an optional FedProx
proximal term (Li et al. 2020) pulling towards the round's starting adapter; a learning-
rate schedule over the whole run's local steps; AdamW moments optionally kept across rounds;
record-level DP-SGD (``record_dp``: Poisson-sampled batches, per-example clipping, noise).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from zenfed.config import TrainConfig
from zenfed.data.examples import TokenizedExample
from zenfed.errors import NonFiniteLossError, ZenfedError
from zenfed.model.adapter import AdapterState, adapter_parameters, set_adapter_state
from zenfed.train.batching import Batch, batches
from zenfed.train.dp_sgd import RecordDP, poisson_batches, private_gradients
from zenfed.train.loss import loss_sum

OptimizerState = dict[str, Any]


@dataclass(frozen=True)
class StepPlan:
    """Where this round's local steps sit in the run (for seeding and the LR schedule)."""

    seed: int
    steps: int
    step_offset: int = 0  # local steps this participant already took in earlier rounds
    total_steps: int = 0  # local steps planned for the whole run (0: no schedule)
    lr: float | None = None  # overrides cfg.lr (a server-side schedule sets it per round)


@dataclass
class LocalResult:
    """What local training produced and what it cost."""

    delta: AdapterState
    num_examples: int  # size of the training split (FedAvg's n_k)
    examples_seen: int  # examples processed, counting repeats
    num_tokens: int  # labelled tokens processed
    seconds: float
    train_loss: float  # token-weighted mean over the steps
    steps: int
    optimizer_state: OptimizerState | None


def plan_steps(cfg: TrainConfig, num_examples: int) -> int:
    """Local optimizer steps per round: ``local_steps``, or epochs over the data."""
    return cfg.steps_per_round(num_examples)


def micro_batch_size(model: torch.nn.Module, cfg: TrainConfig, seq_len: int) -> int:
    """Largest micro-batch whose estimated activation memory fits ``memory_budget_mb``."""
    if cfg.memory_budget_mb is None:
        return cfg.batch_size
    c: Any = model.config
    # fp32 activations kept for backward: ~34 values per hidden unit per layer per token
    # (Korthikanti et al. 2022, without recomputation), plus logits and their gradient.
    per_seq = 4 * seq_len * (34 * c.hidden_size * c.num_hidden_layers + 3 * c.vocab_size)
    return int(max(1, min(cfg.batch_size, (cfg.memory_budget_mb * 2**20) // per_seq)))


def lr_at(cfg: TrainConfig, step: int, total: int, base: float) -> float:
    """The learning rate of local step ``step`` of ``total`` (cosine decays to 10%)."""
    if total <= 0:
        return base
    warm = int(cfg.warmup_fraction * total)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return base
    progress = (step - warm) / max(1, total - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_local(
    model: PeftModel,
    data: Sequence[TokenizedExample],
    cfg: TrainConfig,
    start: AdapterState,
    plan: StepPlan,
    pad_id: int,
    optimizer_state: OptimizerState | None = None,
    name: str = "participant",
    record_dp: RecordDP | None = None,
) -> LocalResult:
    """Train the adapter from ``start`` for ``plan.steps`` steps; return the delta and cost."""
    if not data:
        raise ZenfedError(f"{name} has no training examples", fix="give it data or drop it")
    t0 = time.perf_counter()
    set_adapter_state(model, start)
    params = adapter_parameters(model)
    opt = torch.optim.AdamW(
        list(params.values()),
        lr=plan.lr or cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
    )
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    model.train()
    stream = batches(data, cfg.batch_size, plan.seed, pad_id)
    # DP-SGD's sample must be secret (amplification by subsampling): OS entropy, not the
    # task's seed, which anyone who knows the run's seed can recompute.
    private = poisson_batches(data, cfg.batch_size, int.from_bytes(os.urandom(8), "little"), pad_id)
    # DP-SGD noise must not be predictable from anything public: OS entropy.
    noise_gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    micro = micro_batch_size(model, cfg, max(len(e.input_ids) for e in data))
    loss_total, tokens, seen = 0.0, 0, 0
    for step in range(plan.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, plan.step_offset + step, plan.total_steps, plan.lr or cfg.lr)
        if record_dp is None:
            batch = next(stream)
            step_loss, n, micro = _accumulate(model, batch, micro)
            taken = int(batch["input_ids"].shape[0])
        else:
            s_sum, n, taken = private_gradients(
                model, params, next(private), record_dp, float(cfg.batch_size), noise_gen
            )
            step_loss = s_sum / max(1, n)
        if not math.isfinite(step_loss):
            set_adapter_state(model, start)
            raise NonFiniteLossError(
                f"{name}: the loss became {step_loss} at local step {step + 1}; update discarded",
                fix="lower train.lr or set train.max_grad_norm",
            )
        _proximal_grad(params, start, cfg.proximal_mu)
        if cfg.max_grad_norm is not None and record_dp is None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_total += step_loss * n
        tokens += n
        seen += taken
    delta = {k: p.detach().float() - start[k] for k, p in params.items()}
    return LocalResult(
        delta=delta,
        num_examples=len(data),
        examples_seen=seen,
        num_tokens=tokens,
        seconds=time.perf_counter() - t0,
        train_loss=loss_total / max(1, tokens),
        steps=plan.steps,
        optimizer_state=opt.state_dict() if cfg.keep_optimizer_state else None,
    )


def _accumulate(model: torch.nn.Module, batch: Batch, micro: int) -> tuple[float, int, int]:
    """Backward over ``batch`` in micro-batches; gradients equal the whole-batch mean.

    Returns the mean loss, the labelled token count, and the micro-batch size that worked
    (halved after each out-of-memory error).
    """
    n_tokens = int((batch["labels"][:, 1:] != -100).sum())
    while True:
        try:
            total = 0.0
            for i in range(0, batch["input_ids"].shape[0], micro):
                part = {k: v[i : i + micro] for k, v in batch.items()}
                s, _ = loss_sum(model, part)
                (s / max(1, n_tokens)).backward()
                total += float(s.detach())
            return total / max(1, n_tokens), n_tokens, micro
        except torch.OutOfMemoryError:
            if micro == 1:
                raise
            model.zero_grad(set_to_none=True)
            micro //= 2


def _proximal_grad(params: dict[str, torch.nn.Parameter], start: AdapterState, mu: float) -> None:
    # FedProx: the gradient of (mu / 2) * ||w - w_start||^2 is mu * (w - w_start).
    if mu == 0.0:
        return
    with torch.no_grad():
        for name, p in params.items():
            if p.grad is not None:
                p.grad.add_(p.detach() - start[name], alpha=mu)
