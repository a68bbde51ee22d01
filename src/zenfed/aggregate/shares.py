"""No update may carry more than a share of a round's weight: the cap, by water-filling.

    cap_shares({"a": 2**31 - 1, "b": 10, "c": 10}, 0.5)   # {"a": 20.0, "b": 10, "c": 10}

An update's weight is the examples its participant reports, bounded by what it declared at
enrollment, and a declaration is the participant's to choose: one that declares 2^31 - 1
examples would otherwise make its update the round's result. Capping every weight at
``max_share`` of the capped total, and leaving the others as they were (the excess is
thereby spread over them in proportion to their own weights), bounds any one
participant's pull on the round whatever it declares: with the default 0.5, an honest
majority of the weight remains in every round of three or more.

The capped weights solve w'_i = min(w_i, c W') with W' = sum w'_i: the k heaviest are
capped at the level t = c R_k / (1 - k c), R_k the sum of the others, for the smallest k
whose next weight is at most t. A round of n <= 1 / c updates cannot hold the cap unless
every weight is equal, so it is left as it is (the default holds for 3 or more).
"""

from __future__ import annotations

from collections.abc import Mapping


def most_capped(max_share: float, n: int | None = None) -> int:
    """How many updates of a round (of ``n``, or of any size) the cap can bind at most:
    fewer than 1 / ``max_share``, and none where it does not apply."""
    if max_share >= 1 or (n is not None and n * max_share <= 1):
        return 0
    k = int(1 / max_share)
    return k - 1 if k * max_share >= 1 else k


def cap_shares(weights: Mapping[str, float], max_share: float) -> dict[str, float]:
    """``weights`` with none above ``max_share`` of their total (see the module); the
    same weights where the cap is off (1) or the round too small for it."""
    out = dict(weights)
    if not most_capped(max_share, len(weights)):
        return out
    order = sorted(weights, key=lambda p: (-weights[p], p))
    # rest[k]: the sum of all but the k heaviest, summed from the lightest up (subtracting
    # a huge weight from the total would lose the small ones to rounding)
    rest = [0.0] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        rest[k] = rest[k + 1] + float(weights[order[k]])
    for k, heaviest in enumerate(order):
        level = max_share * rest[k] / (1 - k * max_share)
        if weights[heaviest] <= level:
            for p in order[:k]:
                out[p] = level
            return out
    raise AssertionError("a round of more than 1 / max_share updates always has a level")
