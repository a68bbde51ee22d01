"""A participant that works for a coordinator over the network (what ``zenfed join`` runs).

    run_participant(CoordinatorClient(url, identity), participant)

Poll for a task, train with the shared trainer from the downloaded version, upload; until
the coordinator says the federation has finished. Network failures are retried inside the
client; a refused upload (say, the round closed meanwhile) is reported and the loop goes
on with the next task.
"""

from __future__ import annotations

from collections.abc import Callable

from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.transport.http.client import CoordinatorClient, FederationFinished


def run_participant(
    client: CoordinatorClient,
    participant: Participant,
    wait_s: float = 20.0,
    log: Callable[[str], None] = print,
    save_state: Callable[[Participant], None] | None = None,
) -> int:
    """Train every task the coordinator hands out; returns the number of updates accepted.

    ``save_state`` is called after every accepted upload (the error-feedback residual and
    optimizer state then survive a restart of this process).
    """
    accepted = 0
    while True:
        try:
            task = client.task(wait=wait_s)
        except FederationFinished:
            log(f"federation finished; {accepted} updates accepted")
            return accepted
        if task is None:
            continue
        update = participant.train(task, client.download)
        try:
            status = client.upload(update)
        except ZenfedError as e:  # refused (a 4xx): the round went on without us
            log(f"round {task.round + 1}: update refused: {e}")
            continue
        accepted += status == "accepted"
        if save_state is not None:
            save_state(participant)
        log(f"round {task.round + 1}: update {status} (loss {update.train_loss:.4f})")
