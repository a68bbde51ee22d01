"""What one line's round engine is made of, built from the config and checked before
round 1: the matcher and the strategy (who, and each task's settings), the aggregation
rule, the privacy policy, the round policy, the codecs of each adapter shape, the intake,
the publisher and the version log.

    parts = build_parts(cfg, initial, line=None, screen=None, spill=None)
    parts.codecs(AdapterSpec(rank=4))     # the codec pipeline of rank-4 updates
    state, manifest = parts.first_state(initial)

A setting that cannot work fails here, naming why: a line that does not exist, a
parameter a codec cannot fit, an adapter shape that cannot be built from the federation's
adapter, a robust rule under differential privacy's noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zenfed.aggregate import ServerOptState, build_rule
from zenfed.aggregate.registry import AggregationRule
from zenfed.compress import Pipeline
from zenfed.compress.base import Shape
from zenfed.compress.downlink import Publisher
from zenfed.config import FederationConfig
from zenfed.coordinator.intake import Intake, intake_for
from zenfed.coordinator.matching import Matcher, build_matcher
from zenfed.coordinator.rounds import RoundPolicy, Spill, round_policy
from zenfed.coordinator.screening import Screen
from zenfed.coordinator.state import CoordinatorState
from zenfed.coordinator.strategy import Strategy
from zenfed.coordinator.versionlog import VersionLog
from zenfed.errors import ZenfedError
from zenfed.privacy.policy import PrivacyPolicy
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.manifest import Manifest
from zenfed.protocol.messages import GlobalVersion, root_version
from zenfed.tensors import Tensors


class AdapterCodecs:
    """The codec pipeline of each adapter shape of one federation (by spec id), built once
    a shape is first met; ``dense_update_bytes`` is what one uncompressed float32 update of
    the whole adapter costs (the compression ratio's reference)."""

    def __init__(self, cfg: FederationConfig, initial: Tensors) -> None:
        self.cfg = cfg
        self.shapes: dict[str, Shape] = {k: tuple(v.shape) for k, v in initial.items()}
        self.default = Pipeline(cfg.compress, self.shapes)  # a parameter that cannot fit fails
        self.by_spec: dict[str, Pipeline] = {"": self.default}
        dense = Pipeline(cfg.compress.model_copy(update={"pipeline": ()}), self.shapes)
        self.dense_update_bytes = len(dense.to_bytes(dense.encode(initial, shared_seed=0)))

    def __call__(self, spec: AdapterSpec) -> Pipeline:
        """The codec of updates of shape ``spec`` (ZenfedError if it cannot be built from
        the federation's adapter)."""
        if spec.id not in self.by_spec:
            spec.check(self.shapes, self.cfg.lora.r)
            self.by_spec[spec.id] = Pipeline(self.cfg.compress, spec.shapes(self.shapes))
        return self.by_spec[spec.id]


@dataclass(frozen=True)
class EngineParts:
    """One line's engine parts (see the module)."""

    line: str
    matcher: Matcher
    strategy: Strategy
    rule: AggregationRule
    privacy: PrivacyPolicy
    policy: RoundPolicy
    codecs: AdapterCodecs
    intake: Intake
    publisher: Publisher
    log: VersionLog
    root: GlobalVersion

    def first_state(self, initial: Tensors) -> tuple[CoordinatorState, Manifest]:
        """The state of a new federation's line (its root version, nothing spent) and the
        root's manifest."""
        manifest = self.log.manifest(self.root, "")
        root = replace(self.root, manifest=manifest.digest)
        ledger = self.privacy.initial_ledger()
        return CoordinatorState(
            0, dict(initial), ServerOptState(), [root], privacy=ledger
        ), manifest


def build_parts(
    cfg: FederationConfig,
    initial: Tensors,
    line: str | None = None,
    screen: Screen | None = None,
    spill: Spill | None = None,
) -> EngineParts:
    """The parts of the engine of ``line`` (the first line by default), checked."""
    line = cfg.lines.names[0] if line is None else line
    if line not in cfg.lines.names:
        raise ZenfedError(
            f"no model line '{line}' in this federation",
            fix=f"one of lines.names: {', '.join(cfg.lines.names)}",
        )
    matcher = build_matcher(cfg.sampling, cfg.run.seed, secret=cfg.privacy.enabled)
    strategy, rule = Strategy(cfg, matcher), build_rule(cfg.server.aggregator)
    privacy = PrivacyPolicy(cfg)
    if privacy.accounted and not rule.streaming:
        raise ZenfedError(
            f"server.aggregator = {rule.describe()} with differential privacy: the noise "
            "is calibrated to a sum of clipped updates, not to this rule's result",
            fix="use fedavg under [privacy] noise, or turn the noise off",
        )
    policy = round_policy(cfg, privacy.accounted)
    codecs = AdapterCodecs(cfg, initial)
    for name in sorted(cfg.adapters.assign):  # a shape that cannot be built fails here
        codecs(strategy.spec_for(name) or AdapterSpec())
    intake = intake_for(cfg, codecs, rule, privacy, policy, screen, spill)
    root = root_version(initial, line)
    return EngineParts(
        line,
        matcher,
        strategy,
        rule,
        privacy,
        policy,
        codecs,
        intake,
        Publisher(cfg.compress, codecs.shapes, cfg.run.seed),
        VersionLog(cfg, root.content, rule.describe(), line),
        root,
    )
