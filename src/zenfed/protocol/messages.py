"""The messages of a round, as plain frozen data (what any transport moves).

Task      coordinator -> participant: train (or evaluate) from version V
Update    participant -> coordinator: the encoded adapter delta and what it cost
EvalReport participant -> coordinator: held-out loss sums of version V

Each has one plain form (``Task.to_dict`` / ``Task.from_dict``, ``Update.metadata`` /
``Update.from_metadata``): what the HTTP transport encodes, what the coordinator's
database rows hold and what a restart replays, so no field is lost on any of the ways.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from zenfed.config.lines import DEFAULT_LINE
from zenfed.protocol.adapter import AdapterSpec
from zenfed.protocol.secagg import SecAggSetup
from zenfed.tensors import Tensors, tensors_hash


@dataclass(frozen=True)
class Task:
    """What one participant is asked to do in one round."""

    round: int
    participant: str
    version: str  # the id of the global version to start from
    kind: Literal["train", "evaluate"] = "train"
    deadline: float = 0.0  # when the round ends at the latest (the coordinator's clock)
    seed: int = 0
    lr: float | None = None  # None: the federation's train.lr
    step_offset: int = 0  # where this round's local steps start in the run's schedule
    total_steps: int = 0  # local steps of the whole run (0: no schedule)
    codec_seed: int = 0  # the round's shared seed (random-k / sketch coordinates)
    # Privacy (zenfed.privacy): clip the update to this L2 norm; add Gaussian noise of this
    # stddev to it (a share of distributed DP noise); report whether the norm was within
    # the bound (adaptive clipping), with noise of ``count_noise_std`` under secure
    # aggregation; scale the update by ``weight`` before masking.
    clip_norm: float | None = None
    noise_std: float = 0.0
    report_clip: bool = False
    count_noise_std: float = 0.0
    weight: float = 1.0
    secagg: SecAggSetup | None = None  # set when the round runs secure aggregation
    # Record-level DP-SGD in local training (None: off), accounted at privacy_delta; with
    # record_target_epsilon the participant calibrates its own multiplier to spend at most
    # that over record_rounds rounds of its local steps.
    record_clip_norm: float | None = None
    record_noise_multiplier: float = 0.0
    record_target_epsilon: float | None = None
    record_rounds: int = 0
    secure_noise: bool = False  # draw noise shares and DP-SGD noise from a secure stream
    privacy_delta: float = 1e-6
    adapter: AdapterSpec | None = None  # the shape to train (None: the whole adapter)
    line: str = DEFAULT_LINE  # the model line whose version this starts from ([lines])

    @property
    def spec(self) -> AdapterSpec:
        """The adapter shape this task trains."""
        return self.adapter or AdapterSpec()

    def to_dict(self) -> dict[str, Any]:
        """The task as plain data (numbers, strings, lists, dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """The inverse of :meth:`to_dict` (TypeError or ValueError if malformed)."""
        setup = d.get("secagg")
        if setup is not None:
            setup = SecAggSetup(
                int(setup["round"]),
                tuple(str(x) for x in setup["neighbours"]),
                int(setup["threshold"]),
                int(setup["length"]),
                float(setup["bound"]),
                float(setup["scale"]),
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown task fields {sorted(unknown)}")
        adapter = d.get("adapter")
        spec = AdapterSpec.from_dict(adapter) if isinstance(adapter, dict) else None
        return cls(**{**d, "secagg": setup, "adapter": spec})


@dataclass(frozen=True)
class Update:
    """A participant's result for a training task: the encoded delta plus metadata.

    ``payload`` is the delta as the wire carries it: the federation's codec pipeline
    (``zenfed.compress``) turned into bytes; its length is what the upload cost.
    """

    round: int
    participant: str
    base_version: str
    payload: bytes
    num_examples: int  # size of the training split: the FedAvg weight
    examples_seen: int
    num_tokens: int
    seconds: float
    train_loss: float
    steps: int
    record_epsilon: float | None = None  # DP-SGD: epsilon spent on this holder's records
    # A regional coordinator's update: how many participants it samples from (a root
    # under [regions] divides by regions.fraction times their total).
    pool_size: int | None = None
    adapter: str = ""  # the id of the adapter spec it was trained and encoded for
    # The signed request that carried it (method, path, timestamp, nonce, body sha256,
    # signature), kept with the stored update; not part of its metadata.
    proof: Mapping[str, str] | None = field(default=None, compare=False)

    @property
    def digest(self) -> str:
        """The payload's sha256 in hex (computed once; not functools.cached_property,
        whose lock is shared by every instance and would serialise threads hashing
        different uploads)."""
        known: str | None = self.__dict__.get("_sha256")
        if known is None:
            known = hashlib.sha256(self.payload).hexdigest()
            object.__setattr__(self, "_sha256", known)
        return known

    def metadata(self) -> dict[str, Any]:
        """Everything but the payload, the round and the sender (which the transport
        carries itself): the one plain form of an update's metadata."""
        skip = ("round", "participant", "payload", "proof")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    @classmethod
    def from_metadata(
        cls, server_round: int, participant: str, payload: bytes, meta: dict[str, Any]
    ) -> Update:
        """The inverse of :meth:`metadata`."""
        return cls(round=server_round, participant=participant, payload=payload, **meta)


@dataclass(frozen=True)
class EvalReport:
    """Held-out loss sums of one participant for one version (they add up exactly)."""

    round: int
    participant: str
    version: str
    loss_sum: float
    num_tokens: int
    num_examples: int


@dataclass(frozen=True)
class GlobalVersion:
    """A committed global adapter: its commit id, parent, and what went into it.

    ``id`` names the commit, not the tensors: ``version_id(parent, round, content)``,
    so two commits with equal tensors (a round whose updates were all zero) are two
    versions. ``content`` is the tensors' hash (``tensors_hash``); a participant checks
    both against what it downloads.
    """

    id: str
    round: int
    parent: str | None
    # Exactly the updates combined into it (a flagged or dropped one is not), each with
    # the weight it had in the aggregate (after the cap on shares; 1 each under DP).
    participants: tuple[str, ...] = ()
    num_examples: int = 0  # the examples those updates reported
    metrics: dict[str, float] = field(default_factory=dict)
    content: str = ""
    rollback_of: str = ""  # a rollback republishes this earlier version's tensors
    weights: tuple[float, ...] = ()  # participants[i]'s weight
    manifest: str = ""  # the digest of its manifest (``protocol.manifest``)
    line: str = DEFAULT_LINE  # the model line it belongs to ([lines])


def version_id(
    parent: str | None, server_round: int, content: str, line: str = DEFAULT_LINE
) -> str:
    """A commit's id: sha256 over its parent's id, its round and its tensors' hash (as a
    git commit names its tree and parent), unique along a lineage. A root (no parent) of
    a line other than the default one is named by its line too, so that no two lines
    share a version id (their later versions differ by their parents)."""
    if parent is None and line != DEFAULT_LINE:
        parent = f"line/{line}"
    text = f"zenfed-version/1\n{parent or ''}\n{server_round}\n{content}"
    return hashlib.sha256(text.encode()).hexdigest()


def root_version(initial: Tensors, line: str = DEFAULT_LINE) -> GlobalVersion:
    """The version a line starts from: its initial adapter, no parent, round -1. Every
    party that builds the federation's model (seeded) can compute it itself. The default
    line's root is named by the tensors alone; another line's also by the line's name."""
    content = tensors_hash(initial)
    vid = version_id(None, -1, content, line)
    return GlobalVersion(vid, -1, None, content=content, line=line)
