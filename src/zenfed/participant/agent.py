"""The participant: holds private data and a model, turns tasks into updates.

    p = Participant("clinic", data, runtime)
    update = p.train(task, download)     # download(version, held_version) -> bytes
    report = p.evaluate(task, download)

What a participant does with a task; how tasks reach it and results leave it is its loop
(``zenfed.participant.loop``), the same for the simulation and ``zenfed join``.

The global version arrives as bytes, in full or as the broadcasts since the version the
participant holds (``zenfed.compress.downlink``), and is checked against its hash.
The delta leaves as bytes: encoded by the federation's codec pipeline (``zenfed.compress``).
State that must outlive a round (AdamW moments when ``keep_optimizer_state`` is on, the
error-feedback residual of a lossy pipeline) lives in ``ParticipantState``, which
checkpoints save and restore. With a clip bound in the task the delta is clipped first;
in a secure round (``task.secagg``) the ``secagg_*`` methods answer the protocol's stages
and the upload is the masked vector (``masked_update``); with record-level DP the trainer
runs DP-SGD and the participant keeps its own ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import safetensors.numpy
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from peft import PeftModel

from zenfed.compress import Pipeline
from zenfed.compress.downlink import downlink_pipeline, receive
from zenfed.config import DEFAULT_LINE, CompressConfig, TrainConfig
from zenfed.data.examples import ParticipantData
from zenfed.errors import ZenfedError
from zenfed.model.adapter import adapter_parameters, set_adapter_state
from zenfed.noise import gaussian
from zenfed.participant.state import ParticipantState
from zenfed.privacy import dp
from zenfed.privacy.planner import record_multiplier
from zenfed.privacy.secagg import AdvertiseKeys, SecAggClient, UnmaskRequest
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.messages import EvalReport, Task, Update, root_version
from zenfed.tensors import Tensors
from zenfed.train.dp_sgd import RecordDP, sampling_rate
from zenfed.train.evaluate import evaluate
from zenfed.train.trainer import LocalResult, OptimizerState, StepPlan, plan_steps, train_local

Download = Callable[[str, str | None], bytes]  # (version, held version or None) -> payload
# What a simulated attacker does to its delta before it is encoded (zenfed.sim.attacks).
Tamper = Callable[[Task, Tensors, Download], Tensors]


@dataclass
class Runtime:
    """The model a participant trains (several virtual participants may share one): the
    whole adapter, or one participant's shape of it (``spec``)."""

    model: PeftModel
    pad_id: int
    train: TrainConfig
    compress: CompressConfig = field(default_factory=CompressConfig)
    eval_batch_size: int = 16
    spec: AdapterSpec = field(default_factory=AdapterSpec)
    _codecs: tuple[Pipeline, Pipeline | None] | None = field(default=None, repr=False)

    def configure(self, train: TrainConfig, compress: CompressConfig) -> None:
        """Follow another federation config (a simulation world reused across runs)."""
        self.train, self.compress, self._codecs = train, compress, None

    def codecs(self) -> tuple[Pipeline, Pipeline | None]:
        """The uplink pipeline (what this shape sends: its personal parameters never) and
        the downlink one (None: full versions), built once."""
        if self._codecs is None:
            shapes = {k: tuple(p.shape) for k, p in adapter_parameters(self.model).items()}
            sent = {k: s for k, s in shapes.items() if not self.spec.is_personal(k)}
            self._codecs = (
                Pipeline(self.compress, sent),
                downlink_pipeline(self.compress, shapes),
            )
        return self._codecs


Runtimes = Callable[[AdapterSpec], Runtime]  # an adapter shape -> the model that trains it


class Participant:
    """A data holder's agent: train and evaluate on private data when asked."""

    def __init__(
        self,
        name: str,
        data: ParticipantData,
        runtime: Runtime,
        state: ParticipantState | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        origin: Tensors | None = None,
        runtimes: Runtimes | None = None,
    ) -> None:
        self.name = name
        # The federation's initial adapter as this participant built it (the seeded
        # model's): the root version, held from the start, so with a downlink codec even
        # the first download is the broadcasts since the root (a participant that built
        # another adapter names another root, and the coordinator sends it in full).
        self.origin = None if origin is None else (root_version(origin).id, origin)
        self.line = DEFAULT_LINE  # the model line of its tasks (each line has its own root)
        self.data = data
        self.runtime = runtime  # the whole adapter's: evaluation and downloads use it
        # A task's other adapter shapes: the model of each (one per shape, shared).
        self.runtimes = runtimes
        self.state = state or ParticipantState()
        # Signs this participant's secure-aggregation keys (its identity; in simulation an
        # in-memory key per virtual participant).
        self.signing_key = signing_key or Ed25519PrivateKey.generate()
        self._secagg: SecAggClient | None = None
        # A simulated attack's hook on the delta (None: honest); see zenfed.sim.attacks.
        self.tamper: Tamper | None = None

    @property
    def public_key(self) -> bytes:
        """The raw Ed25519 public key the coordinator knows this participant by."""
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def train(self, task: Task, download: Download) -> Update:
        """Train from the task's version on the private training split; return the delta."""
        record_dp = self._record_dp(task)
        result = self._train_local(task, download, self.state.optimizer, record_dp)
        delta = self._keep_personal(task.spec, result.delta)
        if task.clip_norm is not None and task.secagg is None:  # secure: see masked_update
            delta, _ = dp.clip_l2(delta, task.clip_norm)
        if self.tamper is not None:  # an attacker ignores the clip bound it was given
            delta = self.tamper(task, delta, download)
        rt, feedback = self.runtime_for(task.spec), _feedback_key(task.spec)
        if task.secagg is None:
            payload, residual = rt.codecs()[0].pack(
                delta,
                self.state.extra.get(feedback, {}),
                shared_seed=task.codec_seed,
                private_seed=task.seed,
            )
        else:  # the bound holds on the encoded vector that is summed (masked_update)
            payload, residual = self._masked(task, delta)
        record_epsilon = None
        if record_dp is not None:
            q = sampling_rate(rt.train.batch_size, len(self.data.train))
            self.state.record_privacy += [(q, record_dp.noise_multiplier)] * result.steps
            record_epsilon = dp.epsilon(self.state.record_privacy, task.privacy_delta)
        self.state.optimizer = result.optimizer_state
        self.state.extra[feedback] = residual
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
            record_epsilon=record_epsilon,
            adapter=task.spec.id,
        )

    def runtime_for(self, spec: AdapterSpec) -> Runtime:
        """The model that trains adapter shape ``spec``."""
        if not spec.id:
            return self.runtime
        if self.runtimes is None:
            raise ZenfedError(
                f"{self.name}: the task gives adapter shape '{spec.id}', and this agent "
                "builds only the whole adapter",
                fix="give the participant a way to build other shapes (runtimes)",
            )
        return self.runtimes(spec)

    def _keep_personal(self, spec: AdapterSpec, delta: Tensors) -> Tensors:
        """``delta`` less the personal parameters, whose trained values stay here."""
        if not spec.personal:
            return delta
        start = self.state.extra.get("personal_start", {})
        self.state.extra["personal"] = {
            k: start[k] + d for k, d in delta.items() if spec.is_personal(k)
        }
        return {k: d for k, d in delta.items() if not spec.is_personal(k)}

    def _record_dp(self, task: Task) -> RecordDP | None:
        """DP-SGD's bound and noise multiplier for ``task`` (None: no record-level DP).
        With a target epsilon: the multiplier that spends it over the most local steps
        the run can give this holder (all its rounds), refused once the ledger of its
        records cannot take this round's steps within the target."""
        if task.record_clip_norm is None:
            return None
        if task.record_target_epsilon is None:
            return RecordDP(task.record_clip_norm, task.record_noise_multiplier, task.secure_noise)
        rt, n = self.runtime, len(self.data.train)
        if n == 0:
            raise ZenfedError(
                f"{self.name} has no training examples", fix="give it data or drop it"
            )
        if task.record_rounds < 1:
            raise ZenfedError(
                f"{self.name}: a record_target_epsilon task without the run's rounds cannot be "
                "calibrated (it would spend the whole budget in this round)",
                fix="a coordinator of this zenfed version sets Task.record_rounds",
            )
        steps = plan_steps(rt.train, n)
        q = sampling_rate(rt.train.batch_size, n)
        target, delta = task.record_target_epsilon, task.privacy_delta
        z = record_multiplier(target, delta, q, task.record_rounds * steps)
        spent = dp.epsilon(self.state.record_privacy + [(q, z)] * steps, delta)
        if spent > target * (1 + 1e-9):
            raise dp.PrivacyBudgetExceeded(
                f"{self.name}: {steps} more DP-SGD steps would spend epsilon {spent:.4g} on "
                f"its records, above privacy.record_target_epsilon {target:g}",
                fix="this holder has spent its budget: end the run, or start a new "
                "federation with a larger record_target_epsilon",
            )
        return RecordDP(task.record_clip_norm, z, task.secure_noise)

    def honest_delta(self, task: Task, download: Download) -> Tensors:
        """The delta an honest run of ``task`` would send, unclipped; changes no state
        (a fresh optimizer). What colluding simulated attackers estimate others from."""
        return self._train_local(task, download, None, None).delta

    def _train_local(
        self,
        task: Task,
        download: Download,
        optimizer: OptimizerState | None,
        record_dp: RecordDP | None,
    ) -> LocalResult:
        rt = self.runtime_for(task.spec)
        torch.manual_seed(task.seed)  # LoRA dropout and anything else random: reproducible
        plan = StepPlan(
            seed=task.seed,
            steps=plan_steps(rt.train, len(self.data.train)),
            step_offset=task.step_offset,
            total_steps=task.total_steps,
            lr=task.lr,
        )
        self._follow(task.line)
        start = self._start(task.spec, self.receive(task.version, download))
        return train_local(
            rt.model,
            self.data.train,
            rt.train,
            start,
            plan,
            rt.pad_id,
            optimizer,
            name=self.name,
            record_dp=record_dp,
        )

    def _start(self, spec: AdapterSpec, version: Tensors) -> Tensors:
        """Where training starts: ``spec``'s part of the global version, with this
        participant's own values of its personal parameters."""
        if not spec.id:
            return version
        start = spec.slice(version)
        own = self.state.extra.get("personal", {})
        start.update({k: v for k, v in own.items() if k in start and spec.is_personal(k)})
        if spec.personal:
            self.state.extra["personal_start"] = {k: start[k] for k in start if spec.is_personal(k)}
        return start

    def _masked(self, task: Task, delta: Tensors) -> tuple[bytes, Tensors]:
        client = self._secagg
        if client is None or client.setup.round != task.round:
            raise ZenfedError(
                f"{self.name}: no secure-aggregation keys for round {task.round}",
                fix="run the advertise and share stages first",
            )
        residual = self.state.extra.get("error_feedback", {})
        return masked_update(client, self.runtime.codecs()[0], task, delta, residual)

    def secagg_advertise(self, task: Task) -> AdvertiseKeys:
        """Stage 1 of secure aggregation: fresh keys for the task's round, signed."""
        if task.secagg is None:
            raise ZenfedError(f"round {task.round} runs no secure aggregation", fix="train")
        # the coordinator's id for this participant (its display name may differ)
        self._secagg = SecAggClient(task.participant, task.secagg, self.signing_key.sign)
        return self._secagg.advertise()

    def secagg_share(
        self, keys: dict[str, AdvertiseKeys], verify_keys: dict[str, bytes]
    ) -> dict[str, bytes]:
        """Stage 2: check the neighbours' keys and encrypt each its shares."""
        return self._client().share_keys(keys, verify_keys)

    def secagg_receive(self, inbox: dict[str, bytes]) -> None:
        """Before stage 3: the shares the neighbours sent (they are the mask partners)."""
        self._client().receive_shares(inbox)

    def secagg_unmask(self, request: UnmaskRequest) -> dict[str, bytes]:
        """Stage 4: the shares that let the coordinator remove the masks."""
        return self._client().unmask(request)

    def _client(self) -> SecAggClient:
        if self._secagg is None:
            raise ZenfedError(f"{self.name}: no secure-aggregation round", fix="advertise first")
        return self._secagg

    def evaluate(self, task: Task, download: Download) -> EvalReport:
        """Held-out loss of the task's version on this participant's held-out split."""
        rt = self.runtime
        self._follow(task.line)
        set_adapter_state(rt.model, self.receive(task.version, download))
        res = evaluate(rt.model, self.data.heldout, rt.eval_batch_size, rt.pad_id)
        return EvalReport(
            task.round, self.name, task.version, res.loss_sum, res.num_tokens, res.num_examples
        )

    def _follow(self, line: str) -> None:
        """Tasks of model line ``line``: the origin held is that line's root."""
        if line != self.line and self.origin is not None:
            self.origin = (root_version(self.origin[1], line).id, self.origin[1])
        self.line = line

    def holding(self) -> str | None:
        """The version this participant would download a difference from (None: none)."""
        held = self._holding(self.runtime.codecs()[1] is not None)
        return None if held is None else held[0]

    def _holding(self, with_downlink: bool) -> tuple[str, Tensors] | None:
        return self.state.held or (self.origin if with_downlink else None)

    def receive(self, version: str, download: Download) -> Tensors:
        """The tensors of ``version``: downloaded (as a difference when possible), checked."""
        downlink = self.runtime.codecs()[1]
        held = self._holding(downlink is not None)
        if held is not None and held[0] == version:
            return held[1]  # already here: nothing to download
        payload = download(version, held[0] if held else None)
        tensors = receive(payload, held[1] if held else None, downlink, version)
        if downlink is not None:
            self.state.held = (version, tensors)
        return tensors


def _feedback_key(spec: AdapterSpec) -> str:
    """Where the error-feedback residual of ``spec``'s updates is kept (one per shape)."""
    return "error_feedback" if not spec.id else f"error_feedback/{spec.id}"


def masked_update(
    client: SecAggClient,
    pipeline: Pipeline,
    task: Task,
    delta: Tensors,
    residual: Tensors,
) -> tuple[bytes, Tensors]:
    """The secure-aggregation upload of ``delta``: encoded by the (linear) pipeline into a
    flat vector clipped to the task's bound, scaled by its weight, plus this participant's
    noise share (and, with adaptive clipping, its noised bit of whether the vector was
    within the bound), then masked. The bound holds on the encoded vector, what is summed
    and noised, not on the delta before it: under a random-k subspace of fraction f the
    vector of a delta of norm C has norm about sqrt(f) C, so a bound scaled with it keeps
    the whole projection and the noise falls with it. Returns the payload (safetensors,
    one uint32 tensor ``masked``) and the new error-feedback residual."""
    flat, new_residual, norm = pipeline.pack_flat(
        delta,
        residual,
        shared_seed=task.codec_seed,
        private_seed=task.seed,
        clip_norm=task.clip_norm,
    )
    # OS entropy (or a secure stream): the noise share must not be guessable
    values = flat.astype(np.float64) * task.weight
    if task.noise_std:
        values += gaussian(values.shape, task.noise_std, secure=task.secure_noise)
    if task.report_clip:
        noise = gaussian((), task.count_noise_std, secure=task.secure_noise)
        below = task.clip_norm is None or norm <= task.clip_norm
        values = np.append(values, float(below) - 0.5 + float(noise))  # centred: sensitivity 1/2
    return safetensors.numpy.save({"masked": client.mask(values)}), new_residual
