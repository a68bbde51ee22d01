"""What a round's accepted updates say about the round: the metrics its version records.

    metrics = round_metrics(updates, cohort_size, bytes_up, bytes_down, dense_update_bytes)

Every value is finite (they are stored as JSON): the training loss is token-weighted, or
a plain mean when no update reported tokens.
"""

from __future__ import annotations

from zenfed.protocol.messages import Update


def round_metrics(
    ups: list[Update],
    cohort: int,
    bytes_up: dict[str, int],
    bytes_down: dict[str, int],
    dense_update_bytes: int,
) -> dict[str, float]:
    """Loss, counts, cost and traffic of one round's accepted updates."""
    tokens = sum(u.num_tokens for u in ups)
    losses = [(u.train_loss, u.num_tokens if tokens else 1) for u in ups]
    metrics = {
        "train_loss": sum(x * w for x, w in losses) / max(1, sum(w for _, w in losses)),
        "updates": float(len(ups)),
        "stragglers": float(cohort - len(ups)),
        "steps": float(sum(u.steps for u in ups)),
        "examples_seen": float(sum(u.examples_seen for u in ups)),
        "tokens": float(tokens),
        "client_seconds": float(sum(u.seconds for u in ups)),
        "bytes_up": float(sum(bytes_up.values())),
        "bytes_down": float(sum(bytes_down.values())),
        # what the same updates would have cost as dense float32 deltas
        "dense_bytes_up": float(dense_update_bytes * len(ups)),
    }
    record = [u.record_epsilon for u in ups if u.record_epsilon is not None]
    if record:  # DP-SGD: the largest epsilon any holder has spent on its records
        metrics["record_epsilon_max"] = max(record)
    return metrics
