"""The messages of a round, as plain frozen data (what any transport moves).

Task      coordinator -> participant: train (or evaluate) from version V
Update    participant -> coordinator: the encoded adapter delta and what it cost
EvalReport participant -> coordinator: held-out loss sums of version V
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import torch

from zenfed.privacy.secagg.protocol import SecAggSetup

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """What one participant is asked to do in one round."""

    round: int
    participant: str
    version: str  # content hash of the global adapter to start from
    kind: Literal["train", "evaluate"] = "train"
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
    # Record-level DP-SGD in local training (None: off), accounted at privacy_delta.
    record_clip_norm: float | None = None
    record_noise_multiplier: float = 0.0
    privacy_delta: float = 1e-6


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
    below_clip: bool | None = None  # adaptive clipping without secure aggregation
    record_epsilon: float | None = None  # DP-SGD: epsilon spent on this holder's records


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
    participants: tuple[str, ...] = ()
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    content: str = ""


def version_id(parent: str | None, server_round: int, content: str) -> str:
    """A commit's id: sha256 over its parent's id, its round and its tensors' hash (as a
    git commit names its tree and parent), unique along a lineage."""
    text = f"zenfed-version/1\n{parent or ''}\n{server_round}\n{content}"
    return hashlib.sha256(text.encode()).hexdigest()


def tensors_hash(tensors: Tensors) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: a version's identity."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def safetensors_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (safetensors reads it only from files).

    Format: an 8-byte little-endian header length, then the JSON header.
    """
    n = int.from_bytes(payload[:8], "little")
    return dict(json.loads(payload[8 : 8 + n]).get("__metadata__", {}))
