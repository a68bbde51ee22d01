"""A round's secure aggregation, as the coordinator holds it: the SecAgg+ server, the
setups its tasks carry, and the masked sum that is the round's accumulator.

    tasks, secure = SecureRound.attach(tasks, cfg.secagg, verify_keys, codec)
    tensors = secure.check(update)        # a 1-d uint32 'masked' vector of the right length
    secure.add(pid, tensors, weight)      # into the masked sum
    agg = secure.result()                 # unmasked (SecAggAborted below min_survivors)

The stages themselves are driven by ``zenfed.coordinator.port`` (the only place that
does); the cryptography is ``zenfed.privacy.secagg``. The sum arrives as fixed-point words
of the pipeline's flat vector (plus the clip bit, with adaptive clipping); the aggregate
keeps it flat, so central noise goes where the clip bound holds, and decodes it through
the (linear) codec pipeline when the mean is taken.
"""

from __future__ import annotations

import numpy as np
import safetensors.numpy
import torch

from zenfed.aggregate.accumulate import Aggregate
from zenfed.aggregate.registry import AggregationRule
from zenfed.compress import Pipeline
from zenfed.config import SecAggConfig
from zenfed.coordinator.validate import UpdateRejected
from zenfed.errors import ZenfedError
from zenfed.privacy.secagg import SecAggError, SecAggServer
from zenfed.privacy.secagg.protocol import decode_sum
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors


class SecureRound:
    """The secure-aggregation server of one round and its masked sum."""

    def __init__(
        self, tasks: list[Task], cfg: SecAggConfig, verify_keys: dict[str, bytes], codec: Pipeline
    ) -> None:
        t0 = tasks[0]
        clip = t0.clip_norm or 1.0
        self.report_clip = t0.report_clip
        self.flat = codec.flat_length()
        self.codec, self.codec_seed = codec, t0.codec_seed
        self.server = SecAggServer(
            t0.round,
            [t.participant for t in tasks],
            verify_keys,
            length=self.flat + (1 if t0.report_clip else 0),
            bound=max(clip, 1.0) + 8 * max(t0.noise_std, t0.count_noise_std),
            degree=cfg.degree,
            threshold=cfg.threshold,
            min_survivors=cfg.min_survivors,
            seed=t0.codec_seed,
        )
        self.weight = 0.0

    @staticmethod
    def check_setup(codec: Pipeline, rule: AggregationRule) -> None:
        """ZenfedError unless the federation can aggregate securely: a linear codec of
        float32 parts, and a rule that a sum can compute."""
        codec.require_linear("secure aggregation")
        codec.flat_length()  # every part must be float32 to be summed
        if not rule.streaming:
            raise ZenfedError(
                f"server.aggregator = {rule.describe()} needs every update, and secure "
                "aggregation reveals only their sum",
                fix="use fedavg under [secagg], or turn secure aggregation off (bucketed "
                "secure-robust aggregation is not built yet)",
            )

    @classmethod
    def attach(
        cls, tasks: list[Task], cfg: SecAggConfig, verify_keys: dict[str, bytes], codec: Pipeline
    ) -> tuple[list[Task], SecureRound]:
        """The tasks with each participant's setup, and the round that made them."""
        from dataclasses import replace

        secure = cls(tasks, cfg, verify_keys, codec)
        return [replace(t, secagg=secure.server.setup_for(t.participant)) for t in tasks], secure

    def check(self, update: Update) -> Tensors:
        """The masked words of an upload, checked against the round (UpdateRejected)."""
        try:
            words = safetensors.numpy.load(update.payload)["masked"]
        except Exception as e:  # safetensors raises its own errors and KeyError
            raise UpdateRejected(
                f"masked upload from '{update.participant}' is not a safetensors 'masked' tensor",
                fix="upload what SecAggClient.mask returned",
                reason="payload",
            ) from e
        if words.dtype != np.uint32 or words.ndim != 1:
            raise UpdateRejected(
                f"masked upload from '{update.participant}' is {words.dtype}, {words.ndim}-d",
                fix="upload a 1-d uint32 vector",
                reason="payload",
            )
        try:
            self.server.check_masked(update.participant, words)
        except SecAggError as e:
            raise UpdateRejected(e.problem, fix=e.fix, reason="payload") from e
        return {"masked": torch.from_numpy(words.view(np.int32))}

    def add(self, participant: str, tensors: Tensors, weight: float, below: float = 0.0) -> None:
        """Fold a masked upload into the sum (``weight`` is its task's: applied before
        masking)."""
        self.server.receive_masked(participant, tensors["masked"].numpy().view(np.uint32))
        self.weight += weight

    def result(self) -> Aggregate:
        """The unmasked sum: the flat vector, the clip bits' sum, the survivors' weight."""
        total = decode_sum(self.server.finish(), self.server.scale)
        flat = torch.from_numpy(total[: self.flat].astype(np.float64))
        below = float(total[self.flat]) if self.report_clip else 0.0
        return Aggregate(
            {"flat": flat}, self.weight, len(self.server.masked), below, decode=self._decode
        )

    def _decode(self, total: Tensors) -> Tensors:
        parts = self.codec.unflatten(total["flat"].numpy().astype(np.float32))
        return self.codec.decode(parts, shared_seed=self.codec_seed)
