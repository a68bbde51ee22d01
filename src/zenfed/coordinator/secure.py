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

With a bucketed rule (``aggregator = { rule = ..., bucket = s }``) the cohort is cut into
random buckets of s or more (``secure_buckets``, from the round's seed), each its own
masking group: the coordinator learns each bucket's sum and nothing finer, and the robust
rule combines the bucket means (Karimireddy, He, Jaggi 2022). A bucket that lost all but
one member is not unmasked and drops out of the round.
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
from zenfed.privacy.secagg import SecAggAborted, SecAggError, SecAggServer
from zenfed.privacy.secagg.protocol import add_words, decode_sum, secure_buckets
from zenfed.protocol.messages import Task, Update
from zenfed.tensors import Tensors


class SecureRound:
    """The secure-aggregation server of one round and its masked sum."""

    def __init__(
        self,
        tasks: list[Task],
        cfg: SecAggConfig,
        verify_keys: dict[str, bytes],
        codec: Pipeline,
        rule: AggregationRule | None = None,
    ) -> None:
        t0 = tasks[0]
        self.rule = rule if rule is not None and rule.bucket else None
        ids = [t.participant for t in tasks]
        s = rule.bucket if rule is not None else None
        buckets = secure_buckets(ids, s, t0.codec_seed) if s else None
        clip = t0.clip_norm or 1.0
        self.report_clip = t0.report_clip
        self.flat = codec.flat_length()
        self.codec, self.codec_seed = codec, t0.codec_seed
        self.server = SecAggServer(
            t0.round,
            ids,
            verify_keys,
            length=self.flat + (1 if t0.report_clip else 0),
            bound=max(clip, 1.0) + 8 * max(t0.noise_std, t0.count_noise_std),
            degree=cfg.degree,
            threshold=cfg.threshold,
            min_survivors=cfg.min_survivors,
            seed=t0.codec_seed,
            buckets=buckets,
        )
        self.weights: dict[str, float] = {}

    @staticmethod
    def check_setup(codec: Pipeline, rule: AggregationRule) -> None:
        """ZenfedError unless the federation can aggregate securely: a linear codec of
        float32 parts, and a rule that a sum can compute."""
        codec.require_linear("secure aggregation")
        codec.flat_length()  # every part must be float32 to be summed
        if not rule.streaming and not rule.bucket:
            raise ZenfedError(
                f"server.aggregator = {rule.describe()} needs every update, and secure "
                "aggregation reveals only their sum",
                fix="add bucket = s (2 or more) to the aggregator: secure sums of random "
                "buckets, the rule across them; or use fedavg, or turn secure aggregation off",
            )
        if rule.bucket is not None and rule.bucket < 2:
            raise ZenfedError(
                f"server.aggregator bucket = {rule.bucket} under secure aggregation would "
                "reveal single updates",
                fix="use bucket = 2 or more",
            )

    @classmethod
    def attach(
        cls,
        tasks: list[Task],
        cfg: SecAggConfig,
        verify_keys: dict[str, bytes],
        codec: Pipeline,
        rule: AggregationRule | None = None,
    ) -> tuple[list[Task], SecureRound]:
        """The tasks with each participant's setup, and the round that made them."""
        from dataclasses import replace

        secure = cls(tasks, cfg, verify_keys, codec, rule)
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
        self.weights[participant] = weight

    def result(self) -> Aggregate:
        """The unmasked sum: the flat vector, the clip bits' sum, the survivors' weight;
        bucketed, the rule over the bucket means (SecAggAborted if too few buckets)."""
        sums = self.server.finish_buckets()
        if self.rule is not None:
            return self._robust(sums)
        words = add_words([t for _, t in sums], self.server.length)
        total = decode_sum(words, self.server.scale)
        flat = torch.from_numpy(total[: self.flat].astype(np.float64))
        below = float(total[self.flat]) if self.report_clip else 0.0
        used = {p: self.weights[p] for alive, _ in sums for p in alive}
        weight, count = sum(used.values()), len(used)
        return Aggregate({"flat": flat}, weight, count, below, self._decode, used)

    def _robust(self, sums: list[tuple[tuple[str, ...], np.ndarray]]) -> Aggregate:
        assert self.rule is not None
        means, weights, below = [], [], 0.0
        for alive, words in sums:
            values = decode_sum(words, self.server.scale)
            w = sum(self.weights[p] for p in alive)
            flat = torch.from_numpy(values[: self.flat].astype(np.float64) / w)
            means.append(self._decode({"flat": flat}))
            weights.append(w)
            below += float(values[self.flat]) if self.report_clip else 0.0
        count = sum(len(a) for a, _ in sums)
        try:
            self.rule.check_groups(len(means), count)
            combined = self.rule.combine_buckets(means, weights)
        except ZenfedError as e:
            raise SecAggAborted(
                f"{len(means)} secure buckets were revealed: {e.problem}",
                fix="the round aborts; the previous global version stays",
            ) from e
        used = {p: self.weights[p] for alive, _ in sums for p in alive}
        return Aggregate.of_rule(combined, float(sum(weights)), count, below, used)

    def _decode(self, total: Tensors) -> Tensors:
        parts = self.codec.unflatten(total["flat"].numpy().astype(np.float32))
        return self.codec.decode(parts, shared_seed=self.codec_seed)
