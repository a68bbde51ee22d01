"""Partitioners for simulation: split example indices among participants.

    parts = dirichlet(labels, num_participants=8, alpha=0.5, rng=np.random.default_rng(0))

Every partitioner returns a list of index lists that together cover every example exactly
once. ``natural`` groups by a field (each category its own participant); ``dirichlet``
draws each label's share per participant from Dir(alpha) (Hsu et al. 2019, "Measuring the
effects of non-identical data distribution"); ``quantity`` skews only the sizes; ``iid``
deals examples out evenly at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zenfed.errors import ZenfedError

Partition = list[list[int]]


def natural(labels: Sequence[str]) -> tuple[list[str], Partition]:
    """One participant per distinct label, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return list(groups), list(groups.values())


def iid(
    n_items: int, num_participants: int, rng: np.random.Generator, min_items: int = 1
) -> Partition:
    """Shuffle and deal out in near-equal parts (each at least ``min_items``)."""
    _check_enough(n_items, num_participants, min_items)
    return [part.tolist() for part in np.array_split(rng.permutation(n_items), num_participants)]


def quantity(
    n_items: int,
    num_participants: int,
    alpha: float,
    rng: np.random.Generator,
    min_items: int = 1,
) -> Partition:
    """Random examples, sizes proportional to a Dir(alpha) draw (each at least
    ``min_items``)."""
    _check_enough(n_items, num_participants, min_items)
    shares = rng.dirichlet(np.full(num_participants, alpha))
    spare = n_items - min_items * num_participants
    sizes = min_items + np.floor(shares * spare).astype(int)
    sizes[np.argmax(shares)] += n_items - sizes.sum()  # rounding remainder to the largest
    cuts = np.cumsum(sizes)[:-1]
    return [part.tolist() for part in np.split(rng.permutation(n_items), cuts)]


def dirichlet(
    labels: Sequence[str],
    num_participants: int,
    alpha: float,
    rng: np.random.Generator,
    max_tries: int = 100,
    min_items: int = 1,
) -> Partition:
    """Label skew: each label's examples split among participants by a Dir(alpha) draw.

    Draws again (up to ``max_tries``) until every participant holds at least ``min_items``
    examples (a draw that gives each as many is kept as it is).
    """
    _check_enough(len(labels), num_participants, min_items)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for _ in range(max_tries):
        parts: Partition = [[] for _ in range(num_participants)]
        for idx in by_label.values():
            idx = rng.permutation(idx).tolist()
            shares = rng.dirichlet(np.full(num_participants, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(np.asarray(idx, dtype=int), cuts)):
                parts[p].extend(chunk.tolist())
        if all(len(p) >= min_items for p in parts):
            return parts
    raise ZenfedError(
        f"dirichlet(alpha={alpha}) left a participant with fewer than {min_items} "
        f"example(s) in {max_tries} draws",
        fix="raise data.dirichlet_alpha or lower data.num_participants",
    )


def _check_enough(n_items: int, num_participants: int, min_items: int = 1) -> None:
    if num_participants < 1 or n_items < num_participants * min_items:
        raise ZenfedError(
            f"cannot split {n_items} examples among {num_participants} participants "
            f"with at least {min_items} each",
            fix="lower data.num_participants",
        )
