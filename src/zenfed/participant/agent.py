"""The participant: holds private data and a model, turns tasks into updates.

    p = Participant("clinic", data, runtime)
    update = p.train(task, fetch=coordinator.fetch)     # in-memory transport
    report = p.evaluate(task, fetch=http_client.fetch)  # or any other transport

State that must outlive a round (AdamW moments when ``keep_optimizer_state`` is on) lives in
``ParticipantState``, which checkpoints save and restore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from peft import PeftModel

from zenfed.config import TrainConfig
from zenfed.data.examples import ParticipantData
from zenfed.model.adapter import set_adapter_state
from zenfed.protocol.messages import EvalReport, Task, Tensors, Update
from zenfed.train.evaluate import evaluate
from zenfed.train.trainer import OptimizerState, StepPlan, plan_steps, train_local

Fetch = Callable[[str], Tensors]


@dataclass
class Runtime:
    """The model a participant trains (several virtual participants may share one)."""

    model: PeftModel
    pad_id: int
    train: TrainConfig
    eval_batch_size: int = 16


@dataclass
class ParticipantState:
    """What a participant keeps across rounds and restarts."""

    optimizer: OptimizerState | None = None
    rounds_trained: int = 0
    extra: dict[str, Tensors] = field(default_factory=dict)


class Participant:
    """A data holder's agent: train and evaluate on private data when asked."""

    def __init__(
        self,
        name: str,
        data: ParticipantData,
        runtime: Runtime,
        state: ParticipantState | None = None,
    ) -> None:
        self.name = name
        self.data = data
        self.runtime = runtime
        self.state = state or ParticipantState()

    def train(self, task: Task, fetch: Fetch) -> Update:
        """Train from the task's version on the private training split; return the delta."""
        rt = self.runtime
        torch.manual_seed(task.seed)  # LoRA dropout and anything else random: reproducible
        plan = StepPlan(
            seed=task.seed,
            steps=plan_steps(rt.train, len(self.data.train)),
            step_offset=task.step_offset,
            total_steps=task.total_steps,
            lr=task.lr,
        )
        result = train_local(
            rt.model,
            self.data.train,
            rt.train,
            fetch(task.version),
            plan,
            rt.pad_id,
            self.state.optimizer,
            name=self.name,
        )
        self.state.optimizer = result.optimizer_state
        self.state.rounds_trained += 1
        return Update(
            round=task.round,
            participant=self.name,
            base_version=task.version,
            tensors=result.delta,
            num_examples=result.num_examples,
            examples_seen=result.examples_seen,
            num_tokens=result.num_tokens,
            seconds=result.seconds,
            train_loss=result.train_loss,
            steps=result.steps,
        )

    def evaluate(self, task: Task, fetch: Fetch) -> EvalReport:
        """Held-out loss of the task's version on this participant's held-out split."""
        rt = self.runtime
        set_adapter_state(rt.model, fetch(task.version))
        res = evaluate(rt.model, self.data.heldout, rt.eval_batch_size, rt.pad_id)
        return EvalReport(
            task.round, self.name, task.version, res.loss_sum, res.num_tokens, res.num_examples
        )
