"""The ``[compress]`` section: the codec pipelines of uploads and of the downlink, one
spec per codec. Re-exported by ``zenfed.config``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from zenfed.config.base import _Frozen


class TopKSpec(_Frozen):
    """Top-k sparsification: the k largest magnitudes of each tensor, with their indices."""

    codec: Literal["topk"]
    fraction: float | None = 0.01  # k = ceil(fraction * n) per tensor
    k: int | None = None  # or a fixed k per tensor (must not exceed any tensor's size)
    block: int = 1  # > 1: keep whole blocks of this many consecutive values (k counts blocks)

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
        if self.block < 1:
            raise ValueError(f"topk block must be at least 1, got {self.block}")
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

CODEC_SPECS: dict[str, type[BaseModel]] = {
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
