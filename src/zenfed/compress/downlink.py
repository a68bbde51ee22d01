"""The downlink: a participant gets the global version as a full adapter, or as the
compressed differences since the version it already holds.

    pub = Publisher(cfg.compress, shapes, run_seed)             # the coordinator's side
    public, broadcast = pub.publish(params, published, server_round)
    payload = pub.payload(broadcasts, tensors, version, held)   # what one download carries
    tensors = receive(payload, held, codec, expected=version)   # the participant's, checked

With a downlink pipeline (``compress.downlink``) the coordinator publishes, after each
round, one broadcast: the new server parameters minus the previously published version,
encoded. The published version (what every participant holds and trains from, and what
the version hash names) advances by the *decoded* broadcast, so its error stays on the
server and is carried into the next difference (error feedback on the server side, as in
double-compression schemes such as Tang et al. 2019, "DoubleSqueeze"). A participant that
held the previous version applies the broadcasts it missed, in order, and gets the new
version bit for bit; it checks that against the version's content hash, and the version
id against its parent, round and content (``protocol.version_id``).

Payload: safetensors of uint8 tensors with JSON metadata; ``kind`` is ``full`` (the
adapter's tensors themselves) or ``diff`` (``m0``, ``m1``, ... the broadcast payloads, with
their codec seeds); both name the version (id, parent, round, content hash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import safetensors.torch
import torch

from zenfed.compress.base import Shape
from zenfed.compress.pipeline import Pipeline
from zenfed.config import DEFAULT_LINE, CompressConfig
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import GlobalVersion, version_id
from zenfed.tensors import Tensors, safetensors_metadata, tensors_hash

KEEP_BROADCASTS = 16  # participants more rounds behind than this download in full


@dataclass(frozen=True)
class Broadcast:
    """One published step: version ``parent`` + decode(``payload``) = version ``version``."""

    version: str
    parent: str
    seed: int
    payload: bytes


def _version_meta(version: GlobalVersion) -> dict[str, str]:
    line = {} if version.line == DEFAULT_LINE else {"line": version.line}  # (as before)
    return {
        "format": "zenfed-version/1",
        "version": version.id,
        "parent": version.parent or "",
        "round": str(version.round),
        "content": version.content,
        **line,
    }


def announced_version(payload: bytes) -> GlobalVersion:
    """The version a full payload says it is (its id recomputed from what it names; check
    the tensors with ``receive``)."""
    _, meta = _load(payload)
    try:
        parent, server_round, content = meta["parent"] or None, int(meta["round"]), meta["content"]
    except (KeyError, ValueError) as e:
        raise ZenfedError("download does not name its version", fix="download again") from e
    line = meta.get("line", DEFAULT_LINE)
    vid = version_id(parent, server_round, content, line)
    return GlobalVersion(id=vid, round=server_round, parent=parent, content=content, line=line)


def full_payload(tensors: Tensors, version: GlobalVersion) -> bytes:
    """The whole adapter as safetensors, labelled with its version."""
    return safetensors.torch.save(tensors, metadata={**_version_meta(version), "kind": "full"})


def diff_payload(chain: list[Broadcast], version: GlobalVersion) -> bytes:
    """The broadcasts that take a participant from ``chain[0].parent`` to ``version`` (the
    last one's)."""
    meta = {
        **_version_meta(version),
        "kind": "diff",
        "from": chain[0].parent,
        "seeds": json.dumps([b.seed for b in chain]),
    }
    parts = {
        f"m{i}": torch.frombuffer(bytearray(b.payload), dtype=torch.uint8)
        for i, b in enumerate(chain)
    }
    return safetensors.torch.save(parts, metadata=meta)


def apply_broadcast(public: Tensors, codec: Pipeline, payload: bytes, seed: int) -> Tensors:
    """``public`` advanced by one decoded broadcast (the same arithmetic on both sides)."""
    step = codec.unpack(payload, shared_seed=seed)
    return {k: public[k] + step[k] for k in public}


def downlink_pipeline(cfg: CompressConfig, shapes: dict[str, Shape]) -> Pipeline | None:
    """The pipeline of ``compress.downlink`` for these tensors, or None (full versions)."""
    if not cfg.downlink:
        return None
    return Pipeline(cfg.model_copy(update={"pipeline": cfg.downlink}), shapes)


class Publisher:
    """The coordinator's downlink: publishes each new version (as a broadcast when a
    downlink codec is set) and serves downloads, in full or as the broadcasts since the
    version a participant holds (only when that is smaller)."""

    def __init__(self, cfg: CompressConfig, shapes: dict[str, Shape], run_seed: int) -> None:
        self.codec = downlink_pipeline(cfg, shapes)  # None: versions travel in full
        self.run_seed = run_seed
        self._served: tuple[str, bytes] | None = None

    def publish(
        self, params: Tensors, published: Tensors, server_round: int
    ) -> tuple[Tensors | None, Broadcast | None]:
        """(The new published tensors, the broadcast leading there) for new server
        ``params``; (None, None) without a downlink codec (params are published as they
        are). The broadcast's ``version`` and ``parent`` are filled by :meth:`chain`."""
        if self.codec is None:
            return None, None
        seed = int(np.random.default_rng([self.run_seed, server_round, 2]).integers(2**62))
        diff = {k: params[k] - published[k] for k in params}
        payload = self.codec.to_bytes(self.codec.encode(diff, shared_seed=seed, private_seed=seed))
        return apply_broadcast(published, self.codec, payload, seed), Broadcast(
            "", "", seed, payload
        )

    @staticmethod
    def chain(
        kept: list[Broadcast], new: Broadcast | None, version: GlobalVersion
    ) -> list[Broadcast]:
        """The broadcasts to keep once ``version`` is committed by ``new``."""
        if new is None:
            return []
        named = replace(new, version=version.id, parent=version.parent or "")
        return [*kept[-(KEEP_BROADCASTS - 1) :], named]

    def full(self, tensors: Tensors, version: GlobalVersion) -> bytes:
        """``version`` in full as the wire carries it (safetensors), built once."""
        if self._served is None or self._served[0] != version.id:
            self._served = (version.id, full_payload(tensors, version))
        return self._served[1]

    def payload(
        self,
        broadcasts: list[Broadcast],
        tensors: Tensors,
        version: GlobalVersion,
        held: str | None,
    ) -> bytes:
        """What a participant holding ``held`` downloads to get ``version``."""
        full = self.full(tensors, version)
        return self.diff_since(broadcasts, held, version, len(full)) or full

    @staticmethod
    def diff_since(
        broadcasts: list[Broadcast], held: str | None, version: GlobalVersion, full_size: int
    ) -> bytes | None:
        """The kept broadcasts from ``held`` to ``version`` as one payload, if they connect
        and are smaller than the full version (``full_size`` bytes); else None."""
        ids = [b.parent for b in broadcasts]
        if held is None or held == version.id or held not in ids:
            return None
        chain = broadcasts[ids.index(held) :]
        if chain[-1].version != version.id:
            return None
        diff = diff_payload(chain, version)
        return diff if len(diff) < full_size else None


def receive(payload: bytes, held: Tensors | None, codec: Pipeline | None, expected: str) -> Tensors:
    """The tensors of version ``expected`` from a download: their hash is checked against
    the content the payload names, and ``expected`` against that content's commit id."""
    tensors, meta = _load(payload)
    try:
        parent, server_round, content = meta["parent"] or None, int(meta["round"]), meta["content"]
    except (KeyError, ValueError) as e:
        raise ZenfedError("download does not name its version", fix="download again") from e
    if version_id(parent, server_round, content, meta.get("line", DEFAULT_LINE)) != expected:
        raise ZenfedError(
            f"downloaded payload is not version {expected[:12]}", fix="download the version again"
        )
    if meta.get("kind") == "diff":
        if held is None or codec is None:
            raise ZenfedError(
                "a difference arrived but no version or downlink codec is held",
                fix="download the version in full",
            )
        seeds = json.loads(meta["seeds"])
        out = held
        for i, seed in enumerate(seeds):
            out = apply_broadcast(out, codec, tensors[f"m{i}"].numpy().tobytes(), seed)
    else:
        out = tensors
    if tensors_hash(out) != content:
        raise ZenfedError(
            f"downloaded version {expected[:12]} does not match its content hash",
            fix="download the version in full",
        )
    return out


def _load(payload: bytes) -> tuple[Tensors, dict[str, str]]:
    try:
        tensors = dict(safetensors.torch.load(payload))
        meta = safetensors_metadata(payload)
    except Exception as e:
        raise ZenfedError(f"download is not a valid version payload ({e})", fix="retry") from e
    return tensors, meta
