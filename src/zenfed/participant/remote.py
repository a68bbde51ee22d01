"""A participant that works for a coordinator over the network (what ``zenfed join`` runs).

    run_participant(CoordinatorClient(url, identity), participant)

Poll for a task, train with the shared trainer from the downloaded version, upload; until
the coordinator says the federation has finished. A secure round (the task carries a
SecAgg+ setup) runs its stages in order around the training: advertise keys, fetch the
neighbours' keys and post encrypted shares, fetch the shares sent here, train and upload
the masked update, then answer the unmask request. Network failures are retried inside the
client; a refused upload (say, the round closed meanwhile) is reported and the loop goes
on with the next task.
"""

from __future__ import annotations

from collections.abc import Callable

from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.privacy.secagg import SecAggError, wire
from zenfed.protocol.auth import participant_id
from zenfed.protocol.messages import Task, Update
from zenfed.transport.http.client import CoordinatorClient, FederationFinished

stage_wait_s = 600.0  # how long an agent waits for a secure-aggregation stage to begin


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
        try:
            if task.secagg is not None:
                update = _secure_round(client, participant, task)
            else:
                update = participant.train(task, client.download)
        except ZenfedError as e:  # a stage refused or never began: the round goes on
            log(f"round {task.round + 1}: secure aggregation: {e}")
            continue
        try:
            status = client.upload(update)
        except ZenfedError as e:  # refused (a 4xx): the round went on without us
            log(f"round {task.round + 1}: update refused: {e}")
            continue
        accepted += status == "accepted"
        if save_state is not None:
            save_state(participant)
        log(f"round {task.round + 1}: update {status} (loss {update.train_loss:.4f})")
        if task.secagg is not None:
            try:
                request = wire.request_from_json(
                    client.secagg_wait(task.round, "unmask", stage_wait_s)
                )
                shares = participant.secagg_unmask(request)
                client.secagg_send(task.round, "unmask", {"shares": wire.blobs_to_json(shares)})
            except ZenfedError as e:
                log(f"round {task.round + 1}: unmask stage: {e}")


def _secure_round(client: CoordinatorClient, participant: Participant, task: Task) -> Update:
    """Stages 1-3 of SecAgg+ over HTTP: advertise keys, share them, train and mask (the
    masked update is returned for upload)."""
    r = task.round
    keys = participant.secagg_advertise(task)
    client.secagg_send(r, "advertise_keys", {"keys": wire.keys_to_json(keys)})
    got = client.secagg_wait(r, "share_keys", stage_wait_s)
    raw = got.get("keys")
    if not isinstance(raw, dict):
        raise SecAggError("the coordinator sent no neighbour keys", fix="refused")
    neighbours = {str(v): wire.keys_from_json(str(v), k) for v, k in raw.items()}
    identities = wire.blobs_from_json(got.get("identities"), "identities")
    for v, key in identities.items():  # ids are key hashes: the coordinator cannot swap keys
        if participant_id(key) != v:
            raise SecAggError(
                f"the identity key given for '{v[:12]}' is not that participant's",
                fix="refused: a coordinator substituting keys could read the shares",
            )
    shares = participant.secagg_share(neighbours, identities)
    client.secagg_send(r, "share_keys", {"shares": wire.blobs_to_json(shares)})
    inbox = client.secagg_wait(r, "masked_input", stage_wait_s).get("inbox")
    participant.secagg_receive(wire.blobs_from_json(inbox, "inbox"))
    return participant.train(task, client.download)
