"""What a participant's loop reports as the results its coordinator holds."""

from zenfed.errors import ZenfedError
from zenfed.participant.loop import Done, Failed, drive
from zenfed.protocol.messages import Task


def test_a_retried_upload_the_coordinator_already_stored_counts_as_held() -> None:
    # The crash-and-restart case: the first answer was lost, the retry says "duplicate".
    task = Task(round=1, participant="p1", version="v")
    events = [
        Done(task, "accepted", 1.0),
        Done(task, "duplicate", 1.0),
        Done(Task(round=2, participant="p1", version="v", kind="evaluate"), "reported", 1.0),
    ]
    assert drive(iter(events)) == 2


def test_a_failed_task_is_not_counted() -> None:
    task = Task(round=1, participant="p1", version="v")
    assert drive(iter([Failed(task, ZenfedError("gone", fix="retry"))])) == 0
