"""The basic sections of the federation's config: the model and its LoRA adapter, the
data, local training, the server's aggregation, the run, and the networked service.
Re-exported by ``zenfed.config``, where the other sections live in their own modules."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import model_validator

from zenfed.config.base import _Frozen

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

    def steps_per_round(self, num_examples: int, batch_size: int | None = None) -> int:
        """Local optimizer steps a round: ``local_steps``, or ``local_epochs`` over
        ``num_examples`` in batches of ``batch_size`` (default: this config's)."""
        if self.local_steps is not None:
            return self.local_steps
        batch = batch_size or self.batch_size
        return max(1, math.ceil(float(self.local_epochs or 0) * num_examples / batch))

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("set exactly one of train.local_steps and train.local_epochs")
        if not math.isfinite(self.lr) or self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("train.lr and train.batch_size must be positive")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError("train.local_steps must be at least 1")
        if self.local_epochs is not None and not 0 < self.local_epochs < math.inf:
            raise ValueError("train.local_epochs must be positive and finite")
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
    # A request's head (request line and headers) must arrive within this time of its
    # first byte (or of the connection's start), or it is answered 408 and closed.
    head_timeout_s: float = 5.0
    # Connections open at once: 0 takes as many as the open-file limit allows less a
    # reserve (read at start; a lower limit is warned of); more is lowered to that.
    max_connections: int = 0
    # Connections open at once from one address (0: no cap; behind a reverse proxy every
    # connection is the proxy's: see the README).
    max_connections_per_client: int = 32
    # No participant's share of a round's aggregation weight above this (the excess is
    # spread over the others in proportion), in rounds of more than 1 / share updates
    # (3 or more at 0.5); 1 turns it off. Under secure aggregation it holds over the
    # cohort as sampled (the weights are fixed when the round opens).
    max_weight_share: float = 0.5
    # Enrollment refuses a participant declaring more training examples than this
    # (None: up to 2^31 - 1): the operator's expectation of the largest holder.
    max_examples: int | None = None

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
        if not 0 < self.head_timeout_s <= 300:
            raise ValueError("service.head_timeout_s must be in (0, 300] seconds")
        if self.max_connections < 0 or self.max_connections_per_client < 0:
            raise ValueError(
                "service.max_connections and max_connections_per_client must be >= 0 "
                "(0: from the open-file limit, and no cap per address)"
            )
        if not 0 < self.max_weight_share <= 1:
            raise ValueError("service.max_weight_share must be in (0, 1] (1: no cap)")
        if self.max_examples is not None and not (
            self.min_examples <= self.max_examples <= 2**31 - 1
        ):
            raise ValueError(
                "service.max_examples must be between service.min_examples and 2^31 - 1"
            )
        return self
