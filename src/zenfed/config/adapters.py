"""The ``[adapters]`` section: which participants train which shape of the federation's
adapter, and how the shapes are combined. Re-exported by ``zenfed.config``.

    [adapters.assign]
    clinic-7 = { r = 4 }                   # a smaller rank (memory-bound participant)
    lab-2 = { layers = [0, 1] }            # the adapters of two layers only
    firm-9 = { personal = ["layers.1."] }  # layer 1's adapter stays with firm-9

Everyone not named trains the whole adapter. Heterogeneous shapes are combined by
``combine``: ``zero_pad`` (HetLoRA, Cho et al. 2024: each update zero-padded to the
global shape; each tensor averaged over the updates that hold it). The coordinator
checks every assignment against the model when it starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from zenfed.config.base import _Frozen


class AdapterAssignment(_Frozen):
    """One participant's shape: rank ``r`` (None: lora.r), decoder ``layers`` (None:
    all), and name fragments of ``personal`` parameters that never leave it."""

    r: int | None = None
    layers: tuple[int, ...] | None = None
    personal: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> AdapterAssignment:
        if self.r is not None and self.r < 1:
            raise ValueError("an adapters.assign rank r must be at least 1")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError("adapters.assign layers must be a non-empty list of layer indices")
        return self


class AdaptersConfig(_Frozen):
    """Per-participant adapter shapes (see the module)."""

    assign: dict[str, AdapterAssignment] = Field(default_factory=dict)  # name -> shape
    combine: Literal["zero_pad"] = "zero_pad"
