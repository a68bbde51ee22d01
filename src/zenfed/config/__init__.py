"""The federation's policy as one validated, frozen config: TOML in, typed objects out.

    cfg = load_config("examples/demo.toml")
    cfg.train.lr, cfg.server.optimizer, cfg.run.rounds

Every default is visible here, in one place. Unknown keys and wrong types are rejected with
one line naming the key and the fix (a close spelling is suggested), so a typo never runs a
silently different experiment.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from zenfed.config.base import _Frozen
from zenfed.config.scale import BufferedConfig as BufferedConfig
from zenfed.config.scale import DevicesConfig as DevicesConfig
from zenfed.config.scale import RayConfig as RayConfig
from zenfed.config.scale import RegionsConfig as RegionsConfig
from zenfed.config.trust import AttackConfig as AttackConfig
from zenfed.config.trust import DetectConfig as DetectConfig
from zenfed.config.trust import GateConfig as GateConfig
from zenfed.errors import ZenfedError

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
CHATTERBOT_EIGHT = (
    "tech_support",
    "coding",
    "trivia",
    "emotion",
    "ai",
    "conversations",
    "psychology",
    "literature",
)


class ModelConfig(_Frozen):
    """Which base model: a built-in name, a local Hugging Face folder, or a hub id."""

    name: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16"] = "float32"
    cache_dir: str | None = None  # default: $ZENFED_CACHE or ~/.cache/zenfed
    # Only for the built-in `tiny-llama` (random init, used by tests and engine benchmarks).
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    tiny_vocab_size: int | None = None  # None: the built-in tokenizer's vocabulary


class LoraConfig(_Frozen):
    """The LoRA adapter every participant trains (PEFT's LoraConfig, the fields we expose)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    # FFA-LoRA (Sun et al. 2024): A stays at its seeded random init, only B is trained and
    # sent, halving the bytes of every update.
    freeze_a: bool = False


class ColumnMap(_Frozen):
    """Which columns hold what; unset fields are auto-detected from the column names."""

    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: str | None = None
    text: str | None = None


class SourceConfig(_Frozen):
    """One local data file (JSONL, CSV, Parquet or plain text), read through `datasets`."""

    name: str
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet", "text"] = "auto"
    columns: ColumnMap = ColumnMap()


class DataConfig(_Frozen):
    """Where participants' data comes from and how it is split among them."""

    corpus: Literal["chatterbot"] | None = "chatterbot"  # None when only sources are given
    language: str = "english"
    categories: tuple[str, ...] = CHATTERBOT_EIGHT
    sources: tuple[SourceConfig, ...] = ()
    partition: Literal["natural", "dirichlet", "quantity", "iid"] = "natural"
    partition_field: str = "category"
    num_participants: int | None = None  # needed by dirichlet, quantity and iid
    dirichlet_alpha: float = 0.5
    heldout_fraction: float = 0.2
    max_seq_len: int = 64
    train_on: Literal["assistant", "all"] = "assistant"
    max_examples_per_source: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _sources_replace_corpus(cls, data: Any) -> Any:
        # Giving sources alone means "my files, not the built-in corpus".
        if isinstance(data, dict) and data.get("sources") and "corpus" not in data:
            return {**data, "corpus": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.corpus is None and not self.sources:
            raise ValueError("give data.corpus or at least one [[data.sources]]")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError("data.heldout_fraction must be in (0, 1)")
        if self.partition != "natural" and not self.num_participants:
            raise ValueError(f"data.partition = {self.partition!r} needs data.num_participants")
        return self


class TrainConfig(_Frozen):
    """Local training, the same on every participant (and in the centralized baseline)."""

    lr: float = 1e-3
    local_steps: int | None = 5
    local_epochs: float | None = None
    batch_size: int = 8
    memory_budget_mb: int | None = None  # picks the micro-batch; None: whole batch at once
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float | None = None
    proximal_mu: float = 0.0  # FedProx; 0 disables the proximal term
    keep_optimizer_state: bool = False  # AdamW moments persist across rounds per participant
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_fraction: float = 0.0  # of the whole run's local steps (linear warmup)

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_steps(cls, data: Any) -> Any:
        # Giving local_epochs alone means "epochs instead of the default step count".
        if isinstance(data, dict) and "local_epochs" in data and "local_steps" not in data:
            return {**data, "local_steps": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("set exactly one of train.local_steps and train.local_epochs")
        if self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("train.lr and train.batch_size must be positive")
        return self


# Each aggregation rule's parameters (zenfed.aggregate.registry: the rules; robust.py: what
# each parameter means), the required ones first-listed in RULE_REQUIRED.
RULE_PARAMS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "median": (),
    "trimmed_mean": ("beta",),
    "krum": ("f", "m"),
    "geometric_median": ("iterations", "nu"),
    "norm_bound": ("max_norm", "multiple"),
    "centered_clipping": ("tau", "iterations"),
}
RULE_REQUIRED: dict[str, tuple[str, ...]] = {"trimmed_mean": ("beta",), "krum": ("f",)}


class AggregatorSpec(_Frozen):
    """``[server] aggregator``: a rule's name (``aggregator = "median"``) or a table with the
    rule and its parameters (``aggregator = { rule = "krum", f = 1, m = 3 }``); ``bucket``
    = s applies the rule to the means of random buckets of s updates (Karimireddy et al.
    2022), which secure aggregation can compute bucket by bucket."""

    rule: Literal[
        "fedavg",
        "median",
        "trimmed_mean",
        "krum",
        "geometric_median",
        "norm_bound",
        "centered_clipping",
    ] = "fedavg"
    beta: float | None = None
    f: int | None = None
    m: int | None = None
    iterations: int | None = None
    nu: float | None = None
    max_norm: float | None = None
    multiple: float | None = None
    tau: float | None = None
    bucket: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_name_is_a_rule(cls, data: Any) -> Any:
        return {"rule": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> AggregatorSpec:
        takes = RULE_PARAMS[self.rule]
        for name in ("beta", "f", "m", "iterations", "nu", "max_norm", "multiple", "tau"):
            if getattr(self, name) is not None and name not in takes:
                raise ValueError(
                    f"server.aggregator: '{name}' is not a parameter of {self.rule} "
                    f"(it takes {', '.join(takes) or 'none'})"
                )
        for name in RULE_REQUIRED.get(self.rule, ()):
            if getattr(self, name) is None:
                raise ValueError(f"server.aggregator: {self.rule} needs '{name}'")
        if self.bucket is not None and (self.bucket < 2 or self.rule == "fedavg"):
            raise ValueError(
                "server.aggregator.bucket must be at least 2 and goes with a robust rule "
                "(the mean of bucket means is the mean)"
            )
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The rule's parameters that are set."""
        return {k: getattr(self, k) for k in RULE_PARAMS[self.rule] if getattr(self, k) is not None}


class ServerConfig(_Frozen):
    """Aggregation and the server optimizer applied to the pseudo-gradient."""

    aggregator: AggregatorSpec = AggregatorSpec()  # zenfed.aggregate.registry
    optimizer: Literal["fedavg", "fedavgm", "nesterov", "fedadam", "fedyogi"] = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


class TopKSpec(_Frozen):
    """Top-k sparsification: the k largest magnitudes of each tensor, with their indices."""

    codec: Literal["topk"]
    fraction: float | None = 0.01  # k = ceil(fraction * n) per tensor
    k: int | None = None  # or a fixed k per tensor (must not exceed any tensor's size)

    @model_validator(mode="before")
    @classmethod
    def _k_replaces_fraction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "k" in data and "fraction" not in data:
            return {**data, "fraction": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> TopKSpec:
        if (self.fraction is None) == (self.k is None):
            raise ValueError("topk takes exactly one of fraction and k")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"topk fraction must be in (0, 1], got {self.fraction}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"topk k must be at least 1, got {self.k}")
        return self


class RandKSpec(_Frozen):
    """Random-k: the same random coordinates for every participant of a round (linear)."""

    codec: Literal["randk"]
    fraction: float = 0.01

    @model_validator(mode="after")
    def _check(self) -> RandKSpec:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"randk fraction must be in (0, 1], got {self.fraction}")
        return self


class QuantizeSpec(_Frozen):
    """Stochastic uniform quantization to ``bits`` per value, one (min, step) per block."""

    codec: Literal["quantize"]
    bits: Literal[1, 2, 4, 8] = 8
    block: int = 1024

    @model_validator(mode="after")
    def _check(self) -> QuantizeSpec:
        if self.block < 8 or self.block % 8:
            raise ValueError(f"quantize block must be a positive multiple of 8, got {self.block}")
        return self


class SignSpec(_Frozen):
    """Sign with scale (EF-signSGD): one bit per value, the mean magnitude per block."""

    codec: Literal["sign"]
    block: int = 1024

    @model_validator(mode="after")
    def _check(self) -> SignSpec:
        if self.block < 8 or self.block % 8:
            raise ValueError(f"sign block must be a positive multiple of 8, got {self.block}")
        return self


class LowRankSpec(_Frozen):
    """Truncated SVD of each matrix whose smaller side exceeds ``rank``; others pass."""

    codec: Literal["lowrank"]
    rank: int = 4

    @model_validator(mode="after")
    def _check(self) -> LowRankSpec:
        if self.rank < 1:
            raise ValueError(f"lowrank rank must be at least 1, got {self.rank}")
        return self


class SketchSpec(_Frozen):
    """Count sketch (FetchSGD): ``rows`` hash rows totalling ``fraction`` of n (linear)."""

    codec: Literal["sketch"]
    fraction: float = 0.1
    rows: int = 1

    @model_validator(mode="after")
    def _check(self) -> SketchSpec:
        if not 0.0 < self.fraction <= 1.0 or self.rows < 1:
            raise ValueError("sketch needs fraction in (0, 1] and rows >= 1")
        return self


class ZstdSpec(_Frozen):
    """Lossless zstd of the final bytes; must be the pipeline's last stage."""

    codec: Literal["zstd"]
    level: int = 3

    @model_validator(mode="after")
    def _check(self) -> ZstdSpec:
        if not 1 <= self.level <= 22:
            raise ValueError(f"zstd level must be in [1, 22], got {self.level}")
        return self


CodecSpec = Annotated[
    TopKSpec | RandKSpec | QuantizeSpec | SignSpec | LowRankSpec | SketchSpec | ZstdSpec,
    Field(discriminator="codec"),
]

_CODEC_SPECS: dict[str, type[BaseModel]] = {
    spec.model_fields["codec"].annotation.__args__[0]: spec  # type: ignore[union-attr]
    for spec in (TopKSpec, RandKSpec, QuantizeSpec, SignSpec, LowRankSpec, SketchSpec, ZstdSpec)
}


class CompressConfig(_Frozen):
    """How updates are encoded for the wire: a pipeline of codecs, applied in order.

    ``[[compress.pipeline]]`` tables, e.g. ``codec = "topk"`` then ``codec = "quantize"``
    (applied to the values top-k kept) then ``codec = "zstd"``. Empty: dense float32.
    """

    pipeline: tuple[CodecSpec, ...] = ()
    error_feedback: bool = True  # the participant keeps what was dropped and adds it next time
    # Downlink: the coordinator broadcasts each new version as the encoded difference from
    # the previous one (participants holding that one apply it). Empty: full versions.
    downlink: tuple[CodecSpec, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> CompressConfig:
        for key, stages in (("pipeline", self.pipeline), ("downlink", self.downlink)):
            names = [c.codec for c in stages]
            if "zstd" in names[:-1]:
                raise ValueError(f"zstd works on the final bytes: put it last in compress.{key}")
            terminal = [i for i, n in enumerate(names) if n in ("quantize", "sign")]
            if terminal and any(n != "zstd" for n in names[terminal[0] + 1 :]):
                raise ValueError(
                    f"{names[terminal[0]]} leaves no float values for the codecs after it: "
                    f"put quantize or sign last in compress.{key} (before zstd)"
                )
        return self


class SamplingConfig(_Frozen):
    """Which participants train in a round.

    ``fixed``: a cohort of ``ceil(fraction * n)``, never fewer than ``min_participants``.
    ``poisson``: each participant independently with probability ``fraction`` (what the
    differential-privacy accountant assumes; the cohort size varies, may be small).
    ``epochs``: passes of ``ceil(1 / fraction)`` rounds; in each pass every participant
    trains in exactly one round, drawn from the run's seed, the pass and its name (a
    participant that joins mid-pass takes part at most once in it): what DP-FTRL's tree
    (``privacy.mechanism = "tree"``) assumes, with no sampling to amplify privacy.
    """

    method: Literal["fixed", "poisson", "epochs"] = "fixed"
    fraction: float = 1.0
    min_participants: int = 1

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("sampling.fraction must be in (0, 1]")
        return self

    @property
    def pass_rounds(self) -> int:
        """``epochs``: the rounds of one pass over the participants."""
        return math.ceil(1.0 / self.fraction - 1e-9)


class PrivacyConfig(_Frozen):
    """Participant-level differential privacy (DP-FedAvg) and its accountant.

    Set ``clip_norm`` and one of ``noise_multiplier`` or ``target_epsilon`` (the noise is
    then calibrated to reach it after ``run.rounds``). ``target_epsilon`` is also the
    budget: a round that would exceed it is not run. ``noise = "distributed"`` has each
    participant add its share of the noise under secure aggregation, so no party sees the
    un-noised sum; ``"central"`` has the coordinator add it.

    ``mechanism``: ``"gaussian"`` (DP-FedAvg: independent noise every round, Poisson
    sampling amplifies it) or ``"tree"`` (DP-FTRL, Kairouz et al. 2021: tree-aggregated
    noise on the prefix sums of each pass of ``sampling.method = "epochs"``, no sampling;
    every participant takes part once per pass, as in a cross-silo federation).
    """

    clip_norm: float | None = None  # participant-level L2 bound C (also without noise)
    noise_multiplier: float | None = None  # z: the sum's noise has stddev z * C
    target_epsilon: float | None = None
    target_delta: float = 1e-6
    accountant: Literal["rdp", "pld"] = "rdp"
    noise: Literal["central", "distributed"] = "central"
    mechanism: Literal["gaussian", "tree"] = "gaussian"
    adaptive_clipping: bool = False  # Andrew et al. 2021: C tracks a quantile of norms
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    clip_count_stddev: float | None = None  # None: max(expected cohort / 20, z)
    # Warn (zenfed plan, and the coordinator before round 1) when the noise per coordinate
    # exceeds this multiple of the largest possible mean update's (privacy.planner).
    warn_noise_ratio: float = 1.0
    # Every noise draw (central, distributed, the clip count, DP-SGD) from a
    # cryptographically secure stream, hardened against floating-point attacks
    # (zenfed.noise); default: NumPy's / PyTorch's generators seeded by OS entropy.
    secure_noise: bool = False
    # Record-level DP-SGD in every participant's local training (per-example clipping to
    # record_clip_norm, Gaussian noise of multiplier record_noise_multiplier, Poisson-
    # sampled batches); each participant accounts the epsilon of its own records. Or
    # record_target_epsilon: each participant calibrates its own multiplier so that the
    # most local steps the run can give it (every round) spend at most that epsilon (at
    # target_delta) on its records, and refuses to train past it.
    record_clip_norm: float | None = None
    record_noise_multiplier: float | None = None
    record_target_epsilon: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether updates get noise (and epsilon is accounted)."""
        return self.noise_multiplier is not None or self.target_epsilon is not None

    @model_validator(mode="after")
    def _check(self) -> PrivacyConfig:
        if self.enabled and self.clip_norm is None:
            raise ValueError("differential privacy needs privacy.clip_norm (the bound C)")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError("privacy.clip_norm must be positive")
        if self.noise_multiplier is not None and self.noise_multiplier <= 0:
            raise ValueError("privacy.noise_multiplier must be positive")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError("privacy.target_epsilon must be positive")
        if self.warn_noise_ratio <= 0:
            raise ValueError("privacy.warn_noise_ratio must be positive")
        if not 0.0 < self.target_delta < 1.0:
            raise ValueError("privacy.target_delta must be in (0, 1)")
        if not 0.0 < self.target_quantile < 1.0 or self.clip_lr <= 0:
            raise ValueError("privacy.target_quantile must be in (0, 1), clip_lr positive")
        noise = (self.record_noise_multiplier, self.record_target_epsilon)
        if (self.record_clip_norm is None) != (noise == (None, None)) or None not in noise:
            raise ValueError(
                "record-level DP-SGD needs privacy.record_clip_norm and one of "
                "privacy.record_noise_multiplier or privacy.record_target_epsilon"
            )
        if any(x is not None and x <= 0 for x in (self.record_clip_norm, *noise)):
            raise ValueError(
                "privacy.record_clip_norm, record_noise_multiplier and record_target_epsilon "
                "must be > 0"
            )
        return self


class SecAggConfig(_Frozen):
    """Secure aggregation (SecAgg+, Bell et al. 2020): the coordinator learns only the sum.

    Each participant masks with ``degree`` neighbours of a random regular graph (None:
    3 ceil(log2 n), at least 2), secret-shares its mask secrets among them with threshold
    ``floor(threshold * degree) + 1``, and the round aborts below ``min_survivors`` uploads.
    Values are clipped to ``clip_norm`` (or privacy.clip_norm) and summed as fixed-point
    integers modulo 2^32.
    """

    enabled: bool = False
    degree: int | None = None
    threshold: float = 0.5
    min_survivors: int = 2
    clip_norm: float | None = None
    stage_timeout_s: float = 60.0  # networked: a key-exchange or unmask stage closes then

    @model_validator(mode="after")
    def _check(self) -> SecAggConfig:
        if not 0.5 <= self.threshold < 1.0:
            raise ValueError(
                "secagg.threshold must be in [0.5, 1): below one half a curious coordinator "
                "could collect both secrets of a participant"
            )
        if self.degree is not None and self.degree < 1:
            raise ValueError("secagg.degree must be at least 1")
        if self.min_survivors < 1:
            raise ValueError("secagg.min_survivors must be at least 1")
        return self


class RunConfig(_Frozen):
    """The simulation run: rounds, seed, evaluation cadence, output folder."""

    rounds: int = 3
    seed: int = 0
    eval_every: int = 1  # evaluate the global adapter every k rounds (and always at the end)
    out_dir: str = "runs/zenfed"
    sample_prompts: tuple[str, ...] = ()
    # Simulation only: the chance that a sampled participant drops out of a round (at a
    # random stage of secure aggregation, or before uploading without it).
    dropout: float = 0.0
    # Simulation only: participants in this process, or on Ray actors ([ray]).
    backend: Literal["process", "ray"] = "process"

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("run.dropout must be in [0, 1)")
        return self


MAX_TTL_S = 366 * 24 * 3600.0  # an enrollment token lives at most a year
MAX_WAIT_S = 3600.0  # the longest long-poll a request may ask for


class ServiceConfig(_Frozen):
    """The networked coordinator: who may join, when rounds close, request limits."""

    quorum: float = 1.0  # a round closes once this fraction of its cohort has uploaded
    round_timeout_s: float = 600.0  # ...or at this deadline, with what arrived (stragglers noted)
    min_memory_gb: float = 0.0  # enrollment requirement on the declared capacity
    min_examples: int = 1  # enrollment requirement on the declared data
    invite_ttl_s: float = 7 * 24 * 3600.0
    long_poll_s: float = 20.0
    # A request body (an upload, an enrollment, a stage message) must arrive within this
    # time once its headers are in, or the request is answered 408 and its slot freed.
    body_timeout_s: float = 120.0

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        if not 0.0 < self.quorum <= 1.0:
            raise ValueError("service.quorum must be in (0, 1]")
        if not 0 < self.round_timeout_s <= 30 * 24 * 3600:
            raise ValueError("service.round_timeout_s must be positive (and at most 30 days)")
        if not 0 <= self.long_poll_s <= MAX_WAIT_S:
            raise ValueError(f"service.long_poll_s must be in [0, {MAX_WAIT_S:g}] seconds")
        if not 0 < self.body_timeout_s <= 3600:
            raise ValueError("service.body_timeout_s must be in (0, 3600] seconds")
        if not 0 < self.invite_ttl_s <= MAX_TTL_S:
            raise ValueError(f"service.invite_ttl_s must be in (0, {MAX_TTL_S:g}] seconds")
        return self


class FederationConfig(_Frozen):
    """The whole policy of one training effort."""

    name: str = "zenfed"
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    server: ServerConfig = ServerConfig()
    compress: CompressConfig = CompressConfig()
    sampling: SamplingConfig = SamplingConfig()
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
        if self.detect.validation and self.gate.source == "none":
            raise ValueError(
                "detect.validation scores each update on the gate's validation set: set "
                "gate.source (or detect.validation = false)"
            )
        return self

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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FederationConfig:
    """Read a TOML file into a validated :class:`FederationConfig`.

    ``overrides`` maps dotted keys (``"train.lr"``) to values and is applied before
    validation, so an override is checked like a key in the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ZenfedError(f"config file '{p}' does not exist", fix="pass an existing TOML file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ZenfedError(f"config file '{p}' is not valid TOML: {e}", fix="fix the syntax") from e
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, origin=str(p))


def parse_config(raw: dict[str, Any], origin: str = "config") -> FederationConfig:
    """Validate a plain dict (as TOML would give) into a :class:`FederationConfig`."""
    try:
        return FederationConfig.model_validate(_lists_to_tuples(raw))
    except ValidationError as e:
        raise ZenfedError(f"{origin}: {_describe(e.errors()[0])}", fix=_fix(e.errors()[0])) from e


def _lists_to_tuples(value: Any) -> Any:
    # TOML arrays arrive as lists; the frozen config stores tuples (strict mode needs it).
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _describe(err: Any) -> str:
    key = ".".join(str(x) for x in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"] == "union_tag_invalid":
        return (
            f"unknown {err['ctx']['discriminator'].strip(chr(39))} {err['ctx']['tag']!r} in '{key}'"
        )
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"key '{key}': {err['msg']} (got {err.get('input')!r})"


def _fix(err: Any) -> str:
    if err["type"] == "union_tag_invalid":
        return f"one of {err['ctx']['expected_tags']}"
    if err["type"] != "extra_forbidden":
        return "see the field's type and allowed values in zenfed/config.py"
    *parents, leaf = [str(x) for x in err["loc"]]
    model: Any = FederationConfig
    for name in parents:
        if name.isdigit():
            continue
        if name in _CODEC_SPECS:  # a tagged union member: pydantic puts the tag in the path
            model = _CODEC_SPECS[name]
            continue
        field = getattr(model, "model_fields", {}).get(name)
        ann = getattr(field, "annotation", None)
        inner = getattr(ann, "__args__", (ann,))[0]
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else ann
    known = sorted(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(leaf, known, n=1)
    return f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
