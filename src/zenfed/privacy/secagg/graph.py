"""The communication graph of SecAgg+: each participant masks with, and shares its
secrets among, ``degree`` neighbours of a random regular graph (networkx), not all n.

    nbrs = neighbours(["a", "b", ...], degree=None, seed=7)    # {"a": ("c", "f"), ...}

Bell et al. (2020) show degree O(log n) keeps the sum private and robust to dropouts with
high probability; the default here is 3 * ceil(log2 n), at least 2 and at most n - 1 (then
the graph is complete: the original SecAgg). With the threshold just above half the
degree, that tolerates 10 % of the cohort dropping even when the dropouts cluster around
one participant (at n = 100: degree 21, threshold 11).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx


def default_degree(n: int) -> int:
    """3 * ceil(log2 n), clamped to [2, n - 1]."""
    return max(1, min(n - 1, max(2, 3 * math.ceil(math.log2(max(2, n))))))


def neighbours(ids: Sequence[str], degree: int | None, seed: int) -> dict[str, tuple[str, ...]]:
    """A random ``degree``-regular graph over ``ids`` (complete when degree >= n - 1)."""
    n = len(ids)
    d = default_degree(n) if degree is None else min(degree, n - 1)
    if n * d % 2:  # a regular graph needs n * d even
        d = d + 1 if d + 1 <= n - 1 else d - 1
    if d >= n - 1 or d <= 0:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    g = nx.random_regular_graph(d, n, seed=seed % 2**32)
    return {ids[i]: tuple(sorted(ids[j] for j in g.neighbors(i))) for i in range(n)}
