"""The adapter one participant trains: the federation's LoRA at a lower rank, on a subset
of its layers, with some parameters kept personal.

    spec = AdapterSpec(rank=4)                        # the federation's lora.r is 8
    local = spec.slice(global_tensors)         # what the participant starts from
    sent = spec.shapes(global_shapes)          # what it sends back
    back = spec.embed(update, global_shapes)   # zero-padded to the global shapes

The federation's adapter (``lora.r``, every target module of every layer) is the global
one; a spec is a part of it. At rank k a participant holds the first k rows of each
``lora_A`` and the first k columns of each ``lora_B`` (and scales its adapter by
``alpha * k / r`` so that its product is exactly that part of the global one, HetLoRA's
truncation, Cho et al. 2024); with ``layers`` only the adapters of those decoder layers;
parameters whose names contain one of ``personal`` are trained but never leave it
(personal layers, Arivazhagan et al. 2019). ``None`` as a task's spec, or the default
``AdapterSpec()``, is the whole adapter: nothing changes for a federation that assigns no
shapes. The spec travels in every task; an update names its spec's ``id``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors

Shape = tuple[int, ...]
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class AdapterSpec:
    """One participant's adapter shape (see the module)."""

    rank: int | None = None  # LoRA rank (None: the federation's lora.r)
    layers: tuple[int, ...] | None = None  # decoder layers it trains (None: all)
    personal: tuple[str, ...] = ()  # name fragments of parameters that never leave it

    @property
    def id(self) -> str:
        """A short name, "" for the whole adapter: what an update names its spec by."""
        parts = [f"r{self.rank}"] if self.rank is not None else []
        if self.layers is not None:
            parts.append("l" + "-".join(str(i) for i in self.layers))
        parts += [f"p:{p}" for p in self.personal]
        return ",".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Plain data (a task's field)."""
        return {"rank": self.rank, "layers": self.layers, "personal": list(self.personal)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> AdapterSpec:
        """The inverse of :meth:`to_dict` (ValueError if malformed)."""
        rank, layers, personal = d.get("rank"), d.get("layers"), d.get("personal", ())
        if rank is not None and not isinstance(rank, int):
            raise ValueError("adapter rank must be an integer")
        if layers is not None and not isinstance(layers, list | tuple):
            raise ValueError("adapter layers must be a list of integers")
        if not isinstance(personal, list | tuple):
            raise ValueError("adapter personal must be a list of strings")
        return cls(
            rank,
            None if layers is None else tuple(int(i) for i in layers),
            tuple(str(p) for p in personal),
        )

    # ---- which tensors, what shapes ---------------------------------------------------------

    def holds(self, name: str) -> bool:
        """Whether the participant's adapter has tensor ``name`` (in its layers)."""
        m = _LAYER.search(name)
        return self.layers is None or m is None or int(m.group(1)) in self.layers

    def is_personal(self, name: str) -> bool:
        """Whether tensor ``name`` stays with the participant."""
        return any(p in name for p in self.personal)

    def local_shape(self, name: str, shape: Shape) -> Shape:
        """The participant's shape of global tensor ``name`` (rank-sliced)."""
        if self.rank is None:
            return shape
        if ".lora_A." in name:
            return (self.rank, *shape[1:])
        if ".lora_B." in name:
            return (*shape[:-1], self.rank)
        return shape

    def shapes(self, global_shapes: Mapping[str, Shape]) -> dict[str, Shape]:
        """What the participant sends: every tensor it holds, but the personal ones."""
        return {
            n: self.local_shape(n, s)
            for n, s in global_shapes.items()
            if self.holds(n) and not self.is_personal(n)
        }

    def slice(self, tensors: Tensors) -> Tensors:
        """The participant's part of the global ``tensors`` (personal ones included)."""
        out = {}
        for name, t in tensors.items():
            if self.holds(name):
                shape = self.local_shape(name, tuple(t.shape))
                out[name] = t[tuple(slice(0, n) for n in shape)].clone()
        return out

    def embed(self, update: Tensors, global_shapes: Mapping[str, Shape]) -> Tensors:
        """``update`` (this spec's tensors) zero-padded into the global shapes."""
        out = {}
        for name, t in update.items():
            padded = torch.zeros(global_shapes[name], dtype=t.dtype)
            padded[tuple(slice(0, n) for n in t.shape)] = t
            out[name] = padded
        return out

    def check(self, global_shapes: Mapping[str, Shape], full_rank: int) -> None:
        """ZenfedError unless a participant can build this shape of the global adapter."""
        if self.rank is not None and not 1 <= self.rank <= full_rank:
            raise ZenfedError(
                f"adapter spec '{self.id}': rank {self.rank} is outside [1, {full_rank}] "
                "(the federation's lora.r)",
                fix="assign a rank between 1 and lora.r",
            )
        present = {int(m.group(1)) for n in global_shapes if (m := _LAYER.search(n))}
        missing = sorted(set(self.layers or ()) - present)
        if missing:
            raise ZenfedError(
                f"adapter spec '{self.id}': layer {missing[0]} has no adapter (layers "
                f"{min(present, default=0)}-{max(present, default=0)} do)",
                fix="assign layers the model has",
            )
        for p in self.personal:
            if not any(p in n for n in global_shapes):
                raise ZenfedError(
                    f"adapter spec '{self.id}': personal '{p}' names no adapter parameter",
                    fix="give a fragment of a parameter name (e.g. 'layers.0.')",
                )
        if not self.shapes(global_shapes):
            raise ZenfedError(
                f"adapter spec '{self.id}' leaves nothing to send", fix="share some layers"
            )
