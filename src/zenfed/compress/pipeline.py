"""A chain of codecs applied to every tensor of an update, with error feedback, to bytes.

    pipe = Pipeline(cfg.compress, shapes)                      # checks every parameter
    payload, residual = pipe.pack(delta, residual, shared_seed=s, private_seed=p)
    delta_hat = pipe.unpack(payload, shared_seed=s)            # CodecError if malformed

Stage i encodes the ``values`` part left by stage i - 1 (top-k's kept values can be
quantized); a part is named ``"<tensor>#<stage>.<part>"`` (``"<tensor>#v"`` for float
values left at the end). On the wire the same part of every tensor travels as one flat
safetensors entry, ``"#<stage>.<part>:<dtype>"``, the tensors in name order: both sides
know every part's shape from the shapes and the pipeline, so the header names a handful
of entries instead of every tensor (about 3 KB of a 4-7 KB upload at 0.1 bit a value).
Then zstd, when the pipeline ends with it. ``from_bytes`` also reads the per-tensor
layout of zenfed-update/1 (payloads stored by an earlier version). With
``error_feedback`` the participant adds what the previous rounds dropped before encoding
and keeps what this round drops (Seide et al. 2014; Karimireddy et al. 2019):
residual' = (delta + residual) - decode(encode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import safetensors.torch
import torch
import zstandard

from zenfed.compress.base import Codec, CodecError, Parts, PartSpecs, Shape, derive_seed, numel
from zenfed.compress.lowrank import LowRank
from zenfed.compress.quantize import Quantize
from zenfed.compress.randk import RandK
from zenfed.compress.sign import Sign
from zenfed.compress.sketch import Sketch
from zenfed.compress.topk import TopK
from zenfed.config import CompressConfig
from zenfed.tensors import Tensors

FORMAT = "zenfed-update/2"

CODECS: dict[str, Callable[[Any], Codec]] = {
    "topk": lambda s: TopK(fraction=s.fraction, k=s.k, block=s.block),
    "randk": lambda s: RandK(fraction=s.fraction),
    "quantize": lambda s: Quantize(bits=s.bits, block=s.block),
    "sign": lambda s: Sign(block=s.block),
    "lowrank": lambda s: LowRank(rank=s.rank),
    "sketch": lambda s: Sketch(fraction=s.fraction, rows=s.rows),
}


class Pipeline:
    """The federation's update encoding for a fixed set of tensor names and shapes."""

    def __init__(self, cfg: CompressConfig, shapes: dict[str, Shape]) -> None:
        self.cfg = cfg
        self.codecs = [CODECS[s.codec](s) for s in cfg.pipeline if s.codec != "zstd"]
        zstd = [s for s in cfg.pipeline if s.codec == "zstd"]
        self.zstd_level: int | None = zstd[0].level if zstd else None
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.specs = {name: self._specs(name, shape) for name, shape in self.shapes.items()}
        self.groups = _groups(self.specs)
        self.raw_bytes = sum(
            numel(shape) * torch.empty(0, dtype=dtype).element_size()
            for specs in self.specs.values()
            for shape, dtype in specs.values()
        )

    @property
    def linear(self) -> bool:
        """Whether payloads add up: every codec linear and no entropy coding."""
        return self.zstd_level is None and all(c.linear for c in self.codecs)

    @property
    def lossless(self) -> bool:
        """Whether decode(encode(x)) == x (no codec, or zstd only)."""
        return not self.codecs

    def require_linear(self, feature: str) -> None:
        """Raise a CodecError naming the first stage that ``feature`` cannot sum over."""
        for spec in self.cfg.pipeline:
            if spec.codec == "zstd" or not CODECS[spec.codec](spec).linear:
                raise CodecError(
                    f"compress codec '{spec.codec}' is not linear, so it cannot run under "
                    f"{feature}",
                    fix="use only linear codecs (randk, sketch) with it",
                )

    def max_payload_bytes(self) -> int:
        """An upper bound on an honest payload's size (for refusing oversized uploads)."""
        header = 256 * sum(len(s) for s in self.specs.values()) + 4096
        return int((self.raw_bytes + header) * 1.01) + 1024

    def encode(self, tensors: Tensors, *, shared_seed: int, private_seed: int = 0) -> Parts:
        """Every tensor through every codec: the flat parts of the payload."""
        out: Parts = {}
        for name, x in tensors.items():
            v = x.detach().to(torch.float32)
            for i, codec in enumerate(self.codecs):
                parts = codec.encode(v, self._seed(codec, name, i, shared_seed, private_seed))
                values = parts.pop("values", None)
                out.update({f"{name}#{i}.{k}": t.contiguous() for k, t in parts.items()})
                if values is None:
                    break
                v = values
            else:
                out[f"{name}#v"] = v.contiguous()
        return out

    def decode(self, parts: Parts, *, shared_seed: int) -> Tensors:
        """Check every part's name, shape and dtype, then decode each tensor."""
        expected = {key for specs in self.specs.values() for key in specs}
        if set(parts) != expected:
            odd = sorted(set(parts) ^ expected)[0]
            what = "unexpected" if odd in parts else "missing"
            raise CodecError(f"payload has an {what} part '{odd}'", fix="re-encode the update")
        for specs in self.specs.values():
            for key, (shape, dtype) in specs.items():
                t = parts[key]
                if tuple(t.shape) != shape or t.dtype != dtype:
                    raise CodecError(
                        f"payload part '{key}' is {t.dtype} {tuple(t.shape)}, "
                        f"expected {dtype} {shape}",
                        fix="encode with the federation's compress settings",
                    )
        return {name: self._decode_one(name, parts, shared_seed) for name in self.shapes}

    def to_bytes(self, parts: Parts) -> bytes:
        """The wire form: the parts grouped into flat entries, as safetensors, then zstd if
        the pipeline ends with it."""
        flat = {
            group: torch.cat([parts[key].reshape(-1) for key, _ in members])
            for group, members in self.groups.items()
        }
        raw = safetensors.torch.save(flat, metadata={"format": FORMAT})
        if self.zstd_level is None:
            return raw
        return zstandard.ZstdCompressor(level=self.zstd_level).compress(raw)

    def from_bytes(self, payload: bytes) -> Parts:
        """Parse the wire form back into named parts; a CodecError names what is wrong."""
        if len(payload) > self.max_payload_bytes():
            raise CodecError(
                f"payload of {len(payload)} bytes exceeds the limit of "
                f"{self.max_payload_bytes()} for this adapter and pipeline",
                fix="send one encoded update",
            )
        raw = payload
        if self.zstd_level is not None:
            try:
                raw = zstandard.ZstdDecompressor().decompress(
                    payload, max_output_size=self.max_payload_bytes()
                )
            except zstandard.ZstdError as e:
                raise CodecError(f"payload is not a valid zstd frame ({e})", fix="re-encode") from e
        try:
            loaded = dict(safetensors.torch.load(raw))
        except Exception as e:  # safetensors raises its own SafetensorError and others
            raise CodecError(f"payload is not valid safetensors ({e})", fix="re-encode") from e
        if loaded and all(k.startswith("#") for k in loaded):
            return self._ungroup(loaded)
        return loaded  # zenfed-update/1: one entry a part, checked by ``decode``

    def _ungroup(self, flat: Parts) -> Parts:
        """The grouped entries cut back into each tensor's parts (shapes from the specs)."""
        if set(flat) != set(self.groups):
            odd = sorted(set(flat) ^ set(self.groups))[0]
            what = "unexpected" if odd in flat else "missing"
            raise CodecError(f"payload has an {what} entry '{odd}'", fix="re-encode the update")
        out: Parts = {}
        for group, members in self.groups.items():
            t, dtype = flat[group], members[0][1][1]
            want = sum(numel(shape) for _, (shape, _) in members)
            if t.dim() != 1 or t.numel() != want or t.dtype != dtype:
                raise CodecError(
                    f"payload entry '{group}' is {t.dtype} {tuple(t.shape)}, expected "
                    f"{dtype} ({want},)",
                    fix="encode with the federation's compress settings",
                )
            at = 0
            for key, (shape, _) in members:
                n = numel(shape)
                out[key] = t[at : at + n].reshape(shape)
                at += n
        return out

    def pack(
        self, tensors: Tensors, residual: Tensors, *, shared_seed: int, private_seed: int
    ) -> tuple[bytes, Tensors]:
        """Encode ``tensors`` (plus the error-feedback residual) to bytes; the new residual."""
        x = {
            k: t.to(torch.float32) + residual[k] if k in residual else t for k, t in tensors.items()
        }
        parts = self.encode(x, shared_seed=shared_seed, private_seed=private_seed)
        if not self.cfg.error_feedback or self.lossless:
            return self.to_bytes(parts), {}
        sent = self.decode(parts, shared_seed=shared_seed)
        return self.to_bytes(parts), {k: x[k] - sent[k] for k in x}

    def flat_length(self) -> int:
        """Values in the flat vector of a linear pipeline's parts (what secure aggregation
        masks)."""
        self._require_float_parts()
        return sum(numel(shape) for specs in self.specs.values() for shape, _ in specs.values())

    def flatten(self, parts: Parts) -> np.ndarray:
        """The float32 parts, in key order, as one vector (linear pipelines only)."""
        self._require_float_parts()
        keys = sorted(k for specs in self.specs.values() for k in specs)
        return np.concatenate([parts[k].reshape(-1).numpy() for k in keys]).astype(np.float32)

    def unflatten(self, vector: np.ndarray) -> Parts:
        """Inverse of :meth:`flatten`: the vector cut back into named parts."""
        specs = {k: v for s in self.specs.values() for k, v in s.items()}
        out: Parts = {}
        at = 0
        for key in sorted(specs):
            shape, _ = specs[key]
            n = numel(shape)
            out[key] = torch.from_numpy(np.ascontiguousarray(vector[at : at + n], np.float32))
            out[key] = out[key].reshape(shape)
            at += n
        if at != len(vector):
            raise CodecError(f"flat vector of {len(vector)} values, expected {at}", fix="re-encode")
        return out

    def pack_flat(
        self,
        tensors: Tensors,
        residual: Tensors,
        *,
        shared_seed: int,
        private_seed: int,
        clip_norm: float | None = None,
    ) -> tuple[np.ndarray, Tensors, float]:
        """Like :meth:`pack`, to a flat float32 vector (clipped to L2 ``clip_norm``) instead
        of bytes: what a participant masks under secure aggregation. The residual keeps
        the codec's error only; what clipping removes is not carried over. Also returns
        the vector's L2 norm before clipping."""
        x = {
            k: t.to(torch.float32) + residual[k] if k in residual else t for k, t in tensors.items()
        }
        flat = self.flatten(self.encode(x, shared_seed=shared_seed, private_seed=private_seed))
        kept: Tensors = {}
        if self.cfg.error_feedback and not self.lossless:  # the codec's error, not the clip's
            sent = self.decode(self.unflatten(flat), shared_seed=shared_seed)
            kept = {k: x[k] - sent[k] for k in x}
        norm = float(np.linalg.norm(flat.astype(np.float64)))
        if clip_norm is not None and norm > clip_norm:
            flat = (flat * (clip_norm / norm)).astype(np.float32)
        return flat, kept, norm

    def _require_float_parts(self) -> None:
        self.require_linear("secure aggregation")
        for specs in self.specs.values():
            for key, (_, dtype) in specs.items():
                if dtype != torch.float32:
                    raise CodecError(
                        f"payload part '{key}' is {dtype}, not float32: it cannot be summed",
                        fix="use only linear codecs under secure aggregation",
                    )

    def unpack(self, payload: bytes, *, shared_seed: int) -> Tensors:
        """Bytes from the wire back to dense float32 tensors (CodecError if malformed)."""
        return self.decode(self.from_bytes(payload), shared_seed=shared_seed)

    def _specs(self, name: str, shape: Shape) -> PartSpecs:
        """Every payload key of tensor ``name`` with its (shape, dtype)."""
        specs: PartSpecs = {}
        for i, codec in enumerate(self.codecs):
            stage = dict(codec.part_specs(shape))
            stage.pop("values", None)
            specs.update({f"{name}#{i}.{k}": v for k, v in stage.items()})
            nxt = codec.values_shape(shape)
            if nxt is None:
                return specs
            shape = nxt
        specs[f"{name}#v"] = (shape, torch.float32)
        return specs

    def _decode_one(self, name: str, parts: Parts, shared_seed: int) -> torch.Tensor:
        shapes = [self.shapes[name]]
        for codec in self.codecs[:-1]:
            nxt = codec.values_shape(shapes[-1])
            assert nxt is not None  # only the last codec may be terminal (config checks it)
            shapes.append(nxt)
        values = parts.get(f"{name}#v")
        for i in reversed(range(len(self.codecs))):
            codec = self.codecs[i]
            prefix = f"{name}#{i}."
            stage = {k[len(prefix) :]: t for k, t in parts.items() if k.startswith(prefix)}
            if values is not None:
                stage["values"] = values
            values = codec.decode(stage, shapes[i], self._seed(codec, name, i, shared_seed, 0))
        assert values is not None
        return values.reshape(self.shapes[name])

    @staticmethod
    def _seed(codec: Codec, name: str, stage: int, shared: int, private: int) -> int:
        # Linear codecs must pick the same coordinates on every participant: the round's seed.
        return derive_seed(shared if codec.linear else private, name, stage)


def _groups(specs: dict[str, PartSpecs]) -> dict[str, list[tuple[str, tuple[Shape, torch.dtype]]]]:
    """Wire entries: each part suffix and dtype, with the (key, spec) of every tensor that
    has it, tensors in name order."""
    out: dict[str, list[tuple[str, tuple[Shape, torch.dtype]]]] = {}
    for name in sorted(specs):
        for key, spec in specs[name].items():
            dtype = str(spec[1]).removeprefix("torch.")
            out.setdefault(f"{key[len(name) :]}:{dtype}", []).append((key, spec))
    return out
