"""The participant: holds private data and a model, turns tasks into updates.

    p = Participant("clinic", data, runtime)
    update = p.train(task, download)     # download(version, held_version) -> bytes
    report = p.evaluate(task, download)  # from any transport

The global version arrives as bytes, in full or as the broadcasts since the version the
participant holds (``zenfed.compress.downlink``), and is checked against its hash.
The delta leaves as bytes: encoded by the federation's codec pipeline (``zenfed.compress``).
State that must outlive a round (AdamW moments when ``keep_optimizer_state`` is on, the
error-feedback residual of a lossy pipeline) lives in ``ParticipantState``, which
checkpoints save and restore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from peft import PeftModel

from zenfed.compress import Pipeline
from zenfed.compress.downlink import downlink_pipeline, receive
from zenfed.config import CompressConfig, TrainConfig
from zenfed.data.examples import ParticipantData
from zenfed.model.adapter import adapter_parameters, set_adapter_state
from zenfed.protocol.messages import EvalReport, Task, Tensors, Update
from zenfed.train.evaluate import evaluate
from zenfed.train.trainer import OptimizerState, StepPlan, plan_steps, train_local

Download = Callable[[str, str | None], bytes]  # (version, held version or None) -> payload


@dataclass
class Runtime:
    """The model a participant trains (several virtual participants may share one)."""

    model: PeftModel
    pad_id: int
    train: TrainConfig
    compress: CompressConfig = field(default_factory=CompressConfig)
    eval_batch_size: int = 16
    _codecs: tuple[Pipeline, Pipeline | None] | None = field(default=None, repr=False)

    def configure(self, train: TrainConfig, compress: CompressConfig) -> None:
        """Follow another federation config (a simulation world reused across runs)."""
        self.train, self.compress, self._codecs = train, compress, None

    def codecs(self) -> tuple[Pipeline, Pipeline | None]:
        """The uplink pipeline and the downlink one (None: full versions), built once."""
        if self._codecs is None:
            shapes = {k: tuple(p.shape) for k, p in adapter_parameters(self.model).items()}
            self._codecs = (
                Pipeline(self.compress, shapes),
                downlink_pipeline(self.compress, shapes),
            )
        return self._codecs


@dataclass
class ParticipantState:
    """What a participant keeps across rounds and restarts."""

    optimizer: OptimizerState | None = None
    rounds_trained: int = 0
    extra: dict[str, Tensors] = field(default_factory=dict)
    # The last global version received, kept only with a downlink codec (to apply the
    # broadcasts to). Not checkpointed: after a restart the next download is in full.
    held: tuple[str, Tensors] | None = None


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

    def train(self, task: Task, download: Download) -> Update:
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
            self.receive(task.version, download),
            plan,
            rt.pad_id,
            self.state.optimizer,
            name=self.name,
        )
        payload, residual = rt.codecs()[0].pack(
            result.delta,
            self.state.extra.get("error_feedback", {}),
            shared_seed=task.codec_seed,
            private_seed=task.seed,
        )
        self.state.optimizer = result.optimizer_state
        self.state.extra["error_feedback"] = residual
        self.state.rounds_trained += 1
        return Update(
            round=task.round,
            participant=self.name,
            base_version=task.version,
            payload=payload,
            num_examples=result.num_examples,
            examples_seen=result.examples_seen,
            num_tokens=result.num_tokens,
            seconds=result.seconds,
            train_loss=result.train_loss,
            steps=result.steps,
        )

    def evaluate(self, task: Task, download: Download) -> EvalReport:
        """Held-out loss of the task's version on this participant's held-out split."""
        rt = self.runtime
        set_adapter_state(rt.model, self.receive(task.version, download))
        res = evaluate(rt.model, self.data.heldout, rt.eval_batch_size, rt.pad_id)
        return EvalReport(
            task.round, self.name, task.version, res.loss_sum, res.num_tokens, res.num_examples
        )

    def receive(self, version: str, download: Download) -> Tensors:
        """The tensors of ``version``: downloaded (as a difference when possible), checked."""
        held = self.state.held
        if held is not None and held[0] == version:
            return held[1]  # already here: nothing to download
        payload = download(version, held[0] if held else None)
        downlink = self.runtime.codecs()[1]
        tensors = receive(payload, held[1] if held else None, downlink, version)
        if downlink is not None:
            self.state.held = (version, tensors)
        return tensors
