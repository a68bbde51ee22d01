"""What makes an update acceptable, as pure checks that raise ``UpdateRejected``.

    check_round(update, round_no, cohort, received, version)   # the round's own rules
    check_metadata(update, enrolled_examples)                   # every field in range
    check_finite(participant, tensors)                          # no NaN or Inf

A refusal names the problem and the fix, and carries a short ``reason`` (for metrics, the
audit log and the status a transport answers with). Nothing is changed by a check.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch

from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Update
from zenfed.tensors import Tensors

MAX_COUNT = 2**31 - 1  # examples, tokens and steps of one update (32-bit database columns)
MAX_SECONDS = 1e9
MAX_LOSS = 1e6  # a per-token loss beyond this is not a loss but an attack or a bug


class UpdateRejected(ZenfedError):
    """An update that failed validation; nothing was changed.

    ``reason``: ``not_open``, ``not_in_cohort``, ``already_uploaded``, ``stale_version``,
    ``metadata``, ``weight``, ``payload``, ``non_finite``, ``stale`` (buffered aggregation:
    beyond ``buffered.max_staleness``), or ``busy`` (a transport's: an
    upload from the same participant is in progress).
    """

    def __init__(self, problem: str, fix: str = "", reason: str = "payload") -> None:
        super().__init__(problem, fix)
        self.reason = reason


def check_round(
    u: Update, open_round: int | None, cohort: Collection[str], received: Collection[str], base: str
) -> None:
    """The update belongs to the open round, its cohort, once, from its base version."""
    if open_round is None or u.round != open_round:
        raise UpdateRejected(
            f"update from '{u.participant}' is for round {u.round}, which is not open",
            fix="fetch the current task",
            reason="not_open",
        )
    if u.participant not in cohort:
        raise UpdateRejected(
            f"'{u.participant}' is not in round {open_round}'s cohort",
            fix="only sampled participants may upload",
            reason="not_in_cohort",
        )
    if u.participant in received:
        raise UpdateRejected(
            f"'{u.participant}' already uploaded in round {open_round}",
            fix="upload once per round",
            reason="already_uploaded",
        )
    if u.base_version != base:
        raise UpdateRejected(
            f"update from '{u.participant}' starts from another version",
            fix="train from the version in the task",
            reason="stale_version",
        )


def check_metadata(u: Update, enrolled: int) -> None:
    """Every metadata field in range: a finite loss and time, 32-bit counts, and a weight
    (``num_examples``) of at least 1 and at most the ``enrolled`` examples the participant
    declared when it joined."""
    counts = {
        "examples_seen": u.examples_seen,
        "num_tokens": u.num_tokens,
        "steps": u.steps,
        "pool_size": 1 if u.pool_size is None else u.pool_size,
    }
    for name, value in counts.items():
        if not 0 <= value <= MAX_COUNT:
            raise UpdateRejected(
                f"update from '{u.participant}' has {name} = {value}",
                fix=f"report {name} between 0 and {MAX_COUNT}",
                reason="metadata",
            )
    reals = {"seconds": u.seconds, "record_epsilon": u.record_epsilon or 0.0}
    for name, x in reals.items():
        if not (math.isfinite(x) and 0 <= x <= MAX_SECONDS):
            raise UpdateRejected(
                f"update from '{u.participant}' has {name} = {x}",
                fix=f"report a finite, non-negative {name}",
                reason="metadata",
            )
    if not (math.isfinite(u.train_loss) and abs(u.train_loss) <= MAX_LOSS):
        raise UpdateRejected(
            f"update from '{u.participant}' has loss {u.train_loss} (train_loss)",
            fix=f"report a finite loss within {MAX_LOSS:g} (a NaN loss means: discard the update)",
            reason="metadata",
        )
    if not 1 <= u.num_examples <= enrolled:
        raise UpdateRejected(
            f"update from '{u.participant}' declares num_examples {u.num_examples}, but it "
            f"enrolled with {enrolled} examples (its aggregation weight is bounded by them)",
            fix=f"report the training examples used, between 1 and {enrolled}",
            reason="weight",
        )


def check_region(u: Update, private: bool) -> None:
    """A root over regional coordinators ([regions]) takes updates from regions only: each
    reports its participant pool, and under DP (``private``) its weight is the count of
    clipped updates in its sum, at most that pool."""
    if u.pool_size is None:
        raise UpdateRejected(
            f"update from '{u.participant}' reports no pool_size: this root's participants "
            "are regional coordinators ([regions])",
            fix="join through a regional coordinator (zenfed serve --upstream)",
            reason="metadata",
        )
    if private and u.num_examples > u.pool_size:
        raise UpdateRejected(
            f"update from '{u.participant}' sums {u.num_examples} clipped updates from a pool "
            f"of {u.pool_size}",
            fix="report the count of participants in the region's sum as num_examples",
            reason="weight",
        )


def check_finite(participant: str, tensors: Tensors) -> None:
    """Every value of every tensor is finite."""
    for name, t in tensors.items():
        # A NaN or an Inf makes the sum NaN or Inf, so a finite sum proves every value
        # finite at a thirtieth of the cost; an infinite one (huge finite values can
        # overflow) is settled value by value.
        if bool(t.sum().isfinite()):
            continue
        if not bool(torch.isfinite(t).all()):
            raise UpdateRejected(
                f"tensor '{name}' from '{participant}' has NaN or Inf values",
                fix="discard the update and retrain",
                reason="non_finite",
            )
