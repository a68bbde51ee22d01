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


def iid(n_items: int, num_participants: int, rng: np.random.Generator) -> Partition:
    """Shuffle and deal out in near-equal parts."""
    _check_enough(n_items, num_participants)
    return [part.tolist() for part in np.array_split(rng.permutation(n_items), num_participants)]


def quantity(
    n_items: int, num_participants: int, alpha: float, rng: np.random.Generator
) -> Partition:
    """Random examples, sizes proportional to a Dir(alpha) draw (each at least one)."""
    _check_enough(n_items, num_participants)
    shares = rng.dirichlet(np.full(num_participants, alpha))
    sizes = 1 + np.floor(shares * (n_items - num_participants)).astype(int)
    sizes[np.argmax(shares)] += n_items - sizes.sum()  # rounding remainder to the largest
    cuts = np.cumsum(sizes)[:-1]
    return [part.tolist() for part in np.split(rng.permutation(n_items), cuts)]


def dirichlet(
    labels: Sequence[str],
    num_participants: int,
    alpha: float,
    rng: np.random.Generator,
    max_tries: int = 100,
) -> Partition:
    """Label skew: each label's examples split among participants by a Dir(alpha) draw.

    Draws again (up to ``max_tries``) until every participant holds at least one example.
    """
    _check_enough(len(labels), num_participants)
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
        if all(parts):
            return parts
    raise ZenfedError(
        f"dirichlet(alpha={alpha}) left a participant empty in {max_tries} draws",
        fix="raise data.dirichlet_alpha or lower data.num_participants",
    )


def _check_enough(n_items: int, num_participants: int) -> None:
    if num_participants < 1 or n_items < num_participants:
        raise ZenfedError(
            f"cannot split {n_items} examples among {num_participants} participants",
            fix="lower data.num_participants",
        )
