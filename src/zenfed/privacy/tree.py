"""Tree aggregation for DP-FTRL (Kairouz et al. 2021, "Practical and Private (Deep)
Learning without Sampling or Shuffling"): noise on prefix sums instead of on each step.

    tree = TreeNoise(shapes, std=z * C, seed=secret)
    tree.prefix(t)       # the noise on the sum of leaves 1..t
    tree.increment(t)    # prefix(t) - prefix(t - 1): what round t's sum gets
    tree.increment(t, since=s)   # after a gap: prefix(t) - prefix(s)

Leaf t is round t's sum of clipped updates (t = 1, 2, ... within one tree). Every node of
the binary tree over the leaves holds independent Gaussian noise of stddev ``std``; the
noisy prefix sum of leaves 1..t adds the nodes of the dyadic decomposition of [1, t] (one
per set bit of t, so at most log2(t) + 1 of them). A round that adds
``increment(t)`` to its sum releases, cumulatively, exactly the noisy prefix sums, so a
model moved by the released sums (a server SGD step of any learning rate) is a function
of them. A participant whose update is in one leaf is in at most ceil(log2(T + 1)) nodes
of a tree of T leaves: the sensitivity the accountant takes
(``dp_accounting.SingleEpochTreeAggregationDpEvent``), which needs no sampling
amplification but needs each participant in at most one leaf per tree (``epsilon``).

Node noise is drawn from a generator seeded by (``seed``, level, index): the tree keeps
nothing but its seed, which must stay secret (whoever knows it can subtract the noise).
"""

from __future__ import annotations

import hashlib

import dp_accounting
import torch
from dp_accounting import rdp

from zenfed.compress.base import Shape
from zenfed.tensors import Tensors


class TreeNoise:
    """The Gaussian noise of one binary tree's nodes, drawn on demand."""

    def __init__(self, shapes: dict[str, Shape], std: float, seed: int) -> None:
        self.shapes, self.std, self.seed = dict(shapes), std, seed

    def node(self, level: int, index: int) -> Tensors:
        """The noise of the node covering leaves index * 2^level + 1 .. (index + 1) * 2^level."""
        digest = hashlib.sha256(f"{self.seed}/{level}/{index}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return {
            k: torch.randn(s, generator=gen, dtype=torch.float64) * self.std
            for k, s in sorted(self.shapes.items())
        }

    def nodes(self, t: int) -> list[tuple[int, int]]:
        """The (level, index) of the nodes whose leaves make up [1, t]."""
        out, start = [], 0
        for level in reversed(range(max(t, 1).bit_length())):
            if t >> level & 1:
                out.append((level, start >> level))
                start += 1 << level
        return out

    def prefix(self, t: int) -> Tensors:
        """The noise on the prefix sum of leaves 1..t (zero for t = 0)."""
        total = {k: torch.zeros(s, dtype=torch.float64) for k, s in self.shapes.items()}
        for level, index in self.nodes(t):
            for k, v in self.node(level, index).items():
                total[k] += v
        return total

    def increment(self, t: int, since: int | None = None) -> Tensors:
        """prefix(t) - prefix(``since``, default t - 1): what leaf t's sum gets when the
        tree's last release was leaf ``since``. Nodes both prefixes hold cancel, so only
        the others are drawn."""
        now, before = set(self.nodes(t)), set(self.nodes(t - 1 if since is None else since))
        out = {k: torch.zeros(s, dtype=torch.float64) for k, s in self.shapes.items()}
        for sign, nodes in ((1.0, now - before), (-1.0, before - now)):
            for level, index in sorted(nodes):
                for k, v in self.node(level, index).items():
                    out[k].add_(v, alpha=sign)
        return out


def depth(leaves: int) -> int:
    """The nodes a leaf is in, at most, in a tree of ``leaves`` leaves: ceil(log2(T + 1))."""
    return leaves.bit_length() if leaves > 0 else 0


def tree_event(z: float, trees: list[int]) -> dp_accounting.DpEvent:
    """The DP event of trees of ``trees`` leaves each, with node noise multiplier ``z``,
    each participant in at most one leaf of each tree."""
    whole = [t for t in trees if t > 0]
    if not whole:
        return dp_accounting.NoOpDpEvent()
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SingleEpochTreeAggregationDpEvent(z, t) for t in whole]
    )


def epsilon(z: float, trees: list[int], delta: float) -> float:
    """Epsilon at ``delta`` of ``tree_event`` (dp-accounting's RDP accountant, with the
    replace-one neighbouring relation the tree's analysis uses)."""
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
    acc.compose(tree_event(z, trees))
    return float(acc.get_epsilon(delta))


def passes(rounds: int, pass_rounds: int) -> list[int]:
    """The trees of a run of ``rounds`` rounds in passes of ``pass_rounds``: their leaves."""
    full, rest = divmod(rounds, pass_rounds)
    return [pass_rounds] * full + ([rest] if rest else [])


def calibrate(target_epsilon: float, delta: float, trees: list[int]) -> float:
    """The smallest node noise multiplier whose ``trees`` cost at most ``target_epsilon``
    at ``delta`` (dp-accounting's calibration)."""
    from zenfed.errors import ZenfedError

    try:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: rdp.RdpAccountant(
                    neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
                ),
                lambda z: tree_event(z, trees),
                target_epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, 1e3),
            )
        )
    except Exception as e:
        raise ZenfedError(
            f"epsilon {target_epsilon} at delta {delta} over trees of {trees} leaves is out "
            f"of reach for noise multipliers up to 1000 ({e})",
            fix="raise privacy.target_epsilon or lower run.rounds",
        ) from e


def pass_seed(secret: int, p: int) -> int:
    """The seed of pass ``p``'s tree, from the federation's secret seed."""
    digest = hashlib.sha256(f"zenfed-tree/{secret}/{p}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
