"""Byzantine-robust aggregation rules: pure functions from a round's updates and their
weights to one update, for rounds in which some participants may send arbitrary updates.

    agg = krum(updates, weights, f=2, m=3)
    means, totals = bucket(updates, weights, s=2, seed=round_seed); agg = median(means, totals)

Each rule computes in float64 and returns float32 tensors with the input's names and
shapes. Rules that see an update as one vector (Krum, geometric median, norm bounding,
centered clipping) concatenate its tensors in sorted name order. Updates are expected to
be finite (the coordinator's validation rejects NaN and Inf before aggregation).
``tolerated(rule, n, params)`` says how many of n updates each rule can lose to an attacker.
Counts assume equal weights: weights are self-reported, so a rule that uses them (Krum's
mean, the geometric median, the clipped means) trusts them.

Papers: Yin et al. 2018 (trimmed mean, median); Blanchard et al. 2017 (Krum); El Mhamdi
et al. 2018 (Multi-Krum); Pillutla, Kakade, Harchaoui 2022 (RFA, geometric median); Sun et
al. 2019 (norm bounding); Karimireddy, He, Jaggi 2021 (centered clipping) and 2022
(bucketing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from zenfed.aggregate.rules import _check, fedavg
from zenfed.errors import ZenfedError
from zenfed.tensors import Tensors


def _flatten(updates: Sequence[Tensors]) -> torch.Tensor:
    """The updates as rows of one float64 matrix (n, d), tensors in sorted name order."""
    names = sorted(updates[0])
    shapes = [updates[0][k].shape for k in names]
    for u in updates:
        if sorted(u) != names or [u[k].shape for k in names] != shapes:
            raise ZenfedError(
                "updates differ in tensor names or shapes", fix="send updates of one adapter"
            )
    return torch.stack(
        [torch.cat([u[k].detach().to(torch.float64).reshape(-1) for k in names]) for u in updates]
    )


def _unflatten(vec: torch.Tensor, like: Tensors) -> Tensors:
    """Split a (d,) vector back into float32 tensors named and shaped like ``like``."""
    out, start = {}, 0
    for k in sorted(like):
        size = like[k].numel()
        out[k] = vec[start : start + size].reshape(like[k].shape).to(torch.float32)
        start += size
    return {k: out[k] for k in like}


def _weighted_mean(x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i x_i / sum_i w_i over the rows of x (n, d) -> (d,)."""
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    return (w @ x) / w.sum()


def _median(x: torch.Tensor) -> torch.Tensor:
    """Median over dim 0, the mean of the two middle values for an even count."""
    ordered = x.sort(dim=0).values
    return (ordered[(len(x) - 1) // 2] + ordered[len(x) // 2]) / 2


def _clip(x: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """Each row of x (n, d) scaled by min(1, bound / ||row||); zero rows stay zero."""
    norms = x.norm(dim=1)
    scale = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
    return x * scale[:, None]


def trimmed_mean(updates: Sequence[Tensors], weights: Sequence[float], *, beta: float) -> Tensors:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the
    k = floor(beta n) largest and k smallest values and average the rest, unweighted.

    Assumption: at most k of the n updates are bad; each bad value is either trimmed or
    lies between honest values."""
    _check(updates, weights)
    n = len(updates)
    if not 0 <= beta < 0.5 or n - 2 * math.floor(beta * n) < 1:
        raise ZenfedError(
            f"trimmed_mean with beta={beta} on {n} updates: beta must lie in [0, 0.5)"
            " and leave at least one value per coordinate",
            fix="choose beta in [0, 0.5)",
        )
    k = math.floor(beta * n)
    kept = _flatten(updates).sort(dim=0).values[k : n - k]  # (n - 2k, d)
    return _unflatten(kept.mean(dim=0), updates[0])


def krum_scores(updates: Sequence[Tensors], *, f: int) -> torch.Tensor:
    """Krum scores (Blanchard et al. 2017), shape (n,): for each update, the sum of squared
    Euclidean distances to its n - f - 2 nearest other updates. Low means central."""
    n = len(updates)
    if f < 0:
        raise ZenfedError(f"krum with f={f}", fix="f is a count of bad updates, >= 0")
    if n <= 2 * f + 2:
        raise ZenfedError(
            f"krum with f={f} needs more than 2f+2 = {2 * f + 2} updates, got {n}",
            fix="lower f or sample larger cohorts",
        )
    x = _flatten(updates)
    d2 = torch.stack([((x - x[i]) ** 2).sum(dim=1) for i in range(n)])  # (n, n), symmetric
    d2.fill_diagonal_(math.inf)  # an update is not its own neighbour
    return d2.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


def krum(updates: Sequence[Tensors], weights: Sequence[float], *, f: int, m: int = 1) -> Tensors:
    """Krum (Blanchard et al. 2017) and, for m > 1, Multi-Krum (El Mhamdi et al. 2018):
    the weighted mean of the m updates with the lowest ``krum_scores`` (ties by index).

    Assumption: at most f of the n updates are bad and n > 2f + 2. Permutation invariant
    except when scores tie at the m-th place."""
    _check(updates, weights)
    scores = krum_scores(updates, f=f)
    if not 1 <= m <= len(updates) - f:
        raise ZenfedError(
            f"krum selecting m={m} of {len(updates)} updates with f={f}",
            fix="choose 1 <= m <= n - f",
        )
    chosen = torch.sort(scores, stable=True).indices[:m].tolist()
    x = _flatten([updates[i] for i in chosen])
    return _unflatten(_weighted_mean(x, [weights[i] for i in chosen]), updates[0])


def geometric_median(
    updates: Sequence[Tensors],
    weights: Sequence[float],
    *,
    iterations: int = 10,
    nu: float = 1e-6,
    tol: float = 1e-8,
) -> Tensors:
    """Weighted geometric median by the smoothed Weiszfeld algorithm (RFA: Pillutla,
    Kakade, Harchaoui 2022): from the coordinate-wise median, repeat
    z <- sum_i b_i u_i / sum_i b_i with b_i = w_i / max(nu, ||u_i - z||), until
    ``iterations`` or the objective sum_i w_i ||u_i - z|| changes by less than tol relatively.

    RFA starts at the mean; from an attacker's 1e30 that takes hundreds of iterations to
    leave, so we start at the coordinate-wise median, already within the honest range.

    Assumption: breakdown point 1/2; the bad updates hold less than half the total weight."""
    _check(updates, weights)
    if iterations < 1 or nu <= 0:
        raise ZenfedError(
            f"geometric_median with iterations={iterations}, nu={nu}",
            fix="iterations >= 1 and nu > 0",
        )
    x = _flatten(updates)
    w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
    z = _median(x)
    objective = float((w * (x - z).norm(dim=1)).sum())
    for _ in range(iterations):
        b = w / (x - z).norm(dim=1).clamp_min(nu)
        z = (b @ x) / b.sum()
        previous, objective = objective, float((w * (x - z).norm(dim=1)).sum())
        if abs(previous - objective) <= tol * objective:
            break
    return _unflatten(z, updates[0])


def norm_bound(
    updates: Sequence[Tensors],
    weights: Sequence[float],
    *,
    max_norm: float | None = None,
    multiple: float | None = None,
) -> Tensors:
    """Norm bounding: scale every update longer than the bound down to it, then the
    weighted mean. The bound is ``max_norm`` (fixed: Sun et al. 2019, "Can you really
    backdoor federated learning?") or ``multiple`` times the median of the updates' L2
    norms (adaptive).

    Assumption: none on the number of bad participants; it limits each one's influence to
    its weight share times the bound. It defeats scaling (model replacement) attacks, not
    small in-distribution ones. The adaptive bound stays set by honest updates while fewer
    than half are bad."""
    _check(updates, weights)
    given = [v for v in (max_norm, multiple) if v is not None]
    if len(given) != 1 or not given[0] > 0:
        raise ZenfedError(
            f"norm_bound with max_norm={max_norm}, multiple={multiple}",
            fix="give exactly one of max_norm and multiple, > 0",
        )
    x = _flatten(updates)
    bound = given[0] if multiple is None else given[0] * _median(x.norm(dim=1))
    return _unflatten(_weighted_mean(_clip(x, bound), weights), updates[0])


def centered_clipping(
    updates: Sequence[Tensors],
    weights: Sequence[float],
    *,
    tau: float | None = None,
    iterations: int = 3,
) -> Tensors:
    """Centered clipping (Karimireddy, He, Jaggi 2021, "Learning from History for
    Byzantine Robust Optimization"): repeat v <- v + sum_i w_i clip(u_i - v, tau) / sum_i w_i
    with clip(x, tau) = x min(1, tau / ||x||). The paper starts v at the previous round's
    momentum; we keep no state across rounds and start at the coordinate-wise median.
    tau None means adaptive: the median of ||u_i - v|| at each iteration.

    Assumption: a minority of bad participants (the paper's analysis: a small fraction
    delta of them); each moves v by at most its weight share times tau per iteration."""
    _check(updates, weights)
    if (tau is not None and not tau > 0) or iterations < 1:
        raise ZenfedError(
            f"centered_clipping with tau={tau}, iterations={iterations}",
            fix="tau > 0 (or None for adaptive) and iterations >= 1",
        )
    x = _flatten(updates)
    v = _median(x)
    for _ in range(iterations):
        diff = x - v
        radius = tau if tau is not None else _median(diff.norm(dim=1))
        v = v + _weighted_mean(_clip(diff, radius), weights)
    return _unflatten(v, updates[0])


def bucket_assignment(n: int, s: int, seed: int) -> list[list[int]]:
    """The indices of each bucket: a permutation of range(n) drawn from ``seed``, cut into
    consecutive groups of s (the last may be smaller). Needs no updates, so secure
    aggregation groups can be formed from it before the round."""
    if s < 1 or n < 1:
        raise ZenfedError(f"bucketing {n} updates into buckets of s={s}", fix="n >= 1, s >= 1")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + s] for i in range(0, n, s)]


def bucket(
    updates: Sequence[Tensors], weights: Sequence[float], *, s: int, seed: int
) -> tuple[list[Tensors], list[float]]:
    """Bucketing (Karimireddy, He, Jaggi 2022, "Byzantine-robust learning on heterogeneous
    datasets via bucketing"): each bucket's weighted mean and total weight, for a robust
    rule to aggregate. Averaging makes honest buckets alike despite heterogeneous data.

    Assumption: each bad update spoils at most its own bucket, so the result tolerates as
    many bad updates as the rule applied next tolerates bad buckets out of ceil(n / s)."""
    _check(updates, weights)
    groups = bucket_assignment(len(updates), s, seed)
    means = [fedavg([updates[i] for i in g], [weights[i] for i in g]) for g in groups]
    return means, [float(sum(weights[i] for i in g)) for g in groups]


def _half(n: int, params: Mapping[str, Any]) -> int:
    return (n - 1) // 2


_TOLERATED: dict[str, Callable[[int, Mapping[str, Any]], int]] = {
    "fedavg": lambda n, p: 0,
    "median": _half,
    "trimmed_mean": lambda n, p: math.floor(float(p["beta"]) * n),
    "krum": lambda n, p: int(p["f"]),
    "geometric_median": _half,
    "centered_clipping": _half,
    # a fixed bound limits influence but out-votes no one
    "norm_bound": lambda n, p: _half(n, p) if p.get("multiple") is not None else 0,
}


def tolerated(rule_name: str, n: int, params: Mapping[str, Any]) -> int:
    """How many of n equally weighted updates ``rule_name`` (with ``params``) tolerates
    being arbitrary while its result stays bounded by the honest ones."""
    if rule_name not in _TOLERATED:
        raise ZenfedError(
            f"unknown aggregation rule '{rule_name}'", fix=f"one of {', '.join(_TOLERATED)}"
        )
    if n < 1:
        raise ZenfedError(f"tolerance asked for n={n} updates", fix="n >= 1")
    return _TOLERATED[rule_name](n, params)
