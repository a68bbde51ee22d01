"""The whole federation's config: every section, and the rules between them (what
cannot run together is refused here, with the reason). Re-exported by ``zenfed.config``."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator

from zenfed.config.adapters import AdaptersConfig
from zenfed.config.base import _Frozen
from zenfed.config.compress import CompressConfig
from zenfed.config.lines import LinesConfig
from zenfed.config.privacy import PrivacyConfig, SecAggConfig
from zenfed.config.sampling import SamplingSpec, UniformSampling, tag_sampling
from zenfed.config.scale import BufferedConfig, DevicesConfig, RayConfig, RegionsConfig
from zenfed.config.sections import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    ServerConfig,
    ServiceConfig,
    TrainConfig,
)
from zenfed.config.trust import AttackConfig, DetectConfig, GateConfig


class FederationConfig(_Frozen):
    """The whole policy of one training effort."""

    name: str = "zenfed"
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    server: ServerConfig = ServerConfig()
    compress: CompressConfig = CompressConfig()
    sampling: SamplingSpec = UniformSampling()
    run: RunConfig = RunConfig()
    service: ServiceConfig = ServiceConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secagg: SecAggConfig = SecAggConfig()
    attack: AttackConfig = AttackConfig()  # simulation only
    gate: GateConfig = GateConfig()
    detect: DetectConfig = DetectConfig()
    buffered: BufferedConfig = BufferedConfig()
    devices: DevicesConfig = DevicesConfig()  # simulation only
    ray: RayConfig = RayConfig()  # simulation only, with run.backend = "ray"
    regions: RegionsConfig = RegionsConfig()  # a root over regional coordinators
    adapters: AdaptersConfig = AdaptersConfig()  # per-participant adapter shapes
    lines: LinesConfig = LinesConfig()  # several model lines, each of its members

    @field_validator("sampling", mode="before")
    @classmethod
    def _tag_sampling(cls, value: Any) -> Any:
        return tag_sampling(value)

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        poisson = self.sampling.method == "poisson" or self.buffered.enabled  # (q = 1)
        if self.privacy.mechanism == "tree":
            self._check_tree()
        elif self.privacy.enabled and not poisson:
            raise ValueError(
                "differential privacy is accounted for Poisson sampling of participants: "
                "set sampling.method = 'poisson' (or privacy.mechanism = 'tree' with "
                "sampling.method = 'epochs')"
            )
        if self.privacy.noise == "distributed" and self.privacy.enabled and not self.secagg.enabled:
            raise ValueError(
                "privacy.noise = 'distributed' adds the noise in shares under secure "
                "aggregation: set secagg.enabled = true (or privacy.noise = 'central')"
            )
        if self.secagg.enabled and (self.secagg.clip_norm or self.privacy.clip_norm) is None:
            raise ValueError(
                "secure aggregation sums fixed-point integers whose range comes from a "
                "clipping bound: set secagg.clip_norm or privacy.clip_norm"
            )
        if self.detect.enabled and (self.secagg.enabled or self.privacy.enabled):
            raise ValueError(
                "detect.enabled scores each participant's update, which secure aggregation "
                "hides and differential privacy does not account for (quarantine would leak "
                "through who is sampled): turn [detect] off, or secagg and privacy off"
            )
        if self.buffered.enabled and self.secagg.enabled:
            raise ValueError(
                "buffered asynchronous aggregation with secure aggregation is not built: a "
                "secure sum needs its members to train together (turn one of them off)"
            )
        if self.regions.enabled:
            self._check_regions()
        if self.lines.several and self.regions.enabled:
            raise ValueError(
                "several model lines (lines.names) at a root over regions are not built: "
                "a region forwards one line's update; run one line per root"
            )
        self._check_adapters()
        if self.detect.validation and self.gate.source == "none":
            raise ValueError(
                "detect.validation scores each update on the gate's validation set: set "
                "gate.source (or detect.validation = false)"
            )
        return self

    @property
    def weight_cap(self) -> float:
        """The most of a round's weight one update may carry at this coordinator:
        ``service.max_weight_share``, except at a root over regions, which weighs each
        region by the examples of the participants it aggregated (each region caps its
        own), so that the root's mean is the flat mean over everyone."""
        return 1.0 if self.regions.enabled else self.service.max_weight_share

    def _check_tree(self) -> None:
        pc, why = self.privacy, ""
        if self.sampling.method != "epochs":
            why = "takes every participant once per pass: set sampling.method = 'epochs'"
        elif pc.adaptive_clipping or pc.accountant != "rdp" or pc.noise != "central":
            why = (
                "is built with a fixed clip_norm, central noise and the rdp accountant "
                "(dp-accounting's tree event): drop adaptive_clipping, noise, accountant"
            )
        elif self.buffered.enabled or self.regions.enabled:
            why = "with buffered aggregation or regions is not built"
        elif pc.secure_noise:
            why = (
                "draws its tree's node noise again from a seed kept in the checkpoint, not "
                "from the secure stream: drop privacy.secure_noise"
            )
        if why:
            raise ValueError(f"privacy.mechanism = 'tree' (DP-FTRL) {why}")

    def _check_adapters(self) -> None:
        if not self.adapters.assign:
            return
        too_big = [n for n, a in self.adapters.assign.items() if (a.r or 0) > self.lora.r]
        if too_big:
            raise ValueError(
                f"adapters.assign gives '{too_big[0]}' a rank above lora.r = {self.lora.r}: "
                "a participant's adapter is a part of the federation's"
            )
        modes = [
            ("lora.freeze_a", self.lora.freeze_a),  # a frozen A is each party's own init
            ("secagg.enabled", self.secagg.enabled),
            ("differential privacy", self.privacy.enabled),
            ("detect.enabled", self.detect.enabled),
            ("regions.enabled", self.regions.enabled),
        ]
        blocked = [name for name, on in modes if on]
        if blocked:
            raise ValueError(
                f"adapters.assign (heterogeneous adapter shapes) with {blocked[0]} is not "
                "built: secure sums, DP noise and detection scores are computed over one "
                "shape. Assign no shapes, or turn it off"
            )

    def _check_regions(self) -> None:
        why = ""
        if self.sampling.fraction != 1.0:
            why = (
                "a root over regions hands every region the round's task (sampling.fraction "
                "= 1.0); each region samples its participants with regions.fraction"
            )
        elif self.buffered.enabled or self.secagg.enabled:
            why = (
                "buffered aggregation and secure aggregation at a root over regions are not "
                "built: turn them off at the root (each region runs its own [secagg])"
            )
        elif self.privacy.adaptive_clipping or (
            self.privacy.enabled and self.privacy.noise == "distributed"
        ):
            why = (
                "adaptive clipping and privacy.noise = 'distributed' over regions are not "
                "built: use a fixed privacy.clip_norm, and regions.noise to place the noise"
            )
        if why:
            raise ValueError(why)
