"""Combining updates of different adapter shapes into the global adapter.

    agg = zero_pad({"": (AdapterSpec(), agg8), "r4": (AdapterSpec(rank=4), agg4)}, shapes)

Each shape's updates are first combined among themselves (one accumulator per spec, by
the federation's rule), then the shapes are combined here. ``zero_pad`` (HetLoRA, Cho et
al. 2024): every spec's mean is zero-padded to the global shape and the padded means are
averaged with the specs' weights, each tensor over the specs that hold it (a layer's
adapter combines over those who trained it; a tensor nobody sent does not move). A rank-4
update thus pulls the first 4 ranks with its full weight and the others towards 0: what
HetLoRA's padding does. Better methods (FlexLoRA's SVD redistribution, FLoRA's stacking)
are further entries of ``COMBINERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from zenfed.aggregate.accumulate import Aggregate
from zenfed.protocol.adapter import AdapterSpec, Shape

Parts = Mapping[str, tuple[AdapterSpec, Aggregate]]  # spec id -> (spec, its aggregate)


def zero_pad(parts: Parts, global_shapes: Mapping[str, Shape]) -> Aggregate:
    """The specs' means zero-padded and averaged, each tensor over the specs that hold it
    (an aggregate whose mean is that, whose weight is all the specs' weight)."""
    total = {k: torch.zeros(s, dtype=torch.float64) for k, s in global_shapes.items()}
    held = dict.fromkeys(global_shapes, 0.0)
    weights: dict[str, float] = {}
    count, below = 0, 0.0
    for spec, agg in parts.values():
        for name, t in spec.embed(agg.mean(), global_shapes).items():
            total[name] += t.to(torch.float64) * agg.weight
            held[name] += agg.weight
        weights.update(agg.weights)
        count, below = count + agg.count, below + agg.below
    mean = {k: (t / held[k] if held[k] else t).to(torch.float32) for k, t in total.items()}
    return Aggregate.of_rule(
        mean, float(sum(a.weight for _, a in parts.values())), count, below, weights
    )


COMBINERS: dict[str, Callable[[Parts, Mapping[str, Shape]], Aggregate]] = {"zero_pad": zero_pad}
