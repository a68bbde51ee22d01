"""A regional coordinator's work for its root (``zenfed serve --upstream URL``): one
participant's loop, whose training is the region's own round.

    task = asyncio.create_task(work_for_root(ctx, link))   # beside the region's service

The region joins the root once it has its own ``sampling.min_participants`` ready,
declaring their examples as its own (the root bounds the region's weight by them). Then,
over and over: long-poll the root for a task; download the task's version and hand both
to the region's coordinator (``PersistentCoordinator.take_root_task``), whose ticker opens
the region's round for it; wait until that round has been forwarded (or the root's
deadline passes); upload the region's update (retried by the client until the root
answers; a retry of an update the root already holds is a "duplicate", not a second
count). A task the region cannot do (a secure round at the root) is refused once, with the
reason, and the root treats the region as a straggler. The root's end (410) ends the
region's federation. Nothing here blocks the event loop: the client's calls run in
threads, the coordinator's under the service's lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from zenfed.coordinator.regional import Region
from zenfed.errors import ZenfedError
from zenfed.protocol.messages import Task
from zenfed.protocol.port import FederationFinished
from zenfed.transport.http.client import CoordinatorClient
from zenfed.transport.http.service import ServiceContext

log = logging.getLogger("zenfed.upstream")


@dataclass
class Link:
    """The region's side of its link to the root: the client (its identity), its name
    there, the token it joins with (None once it has), and where it records that it did."""

    client: CoordinatorClient
    region: Region
    name: str
    token: str | None
    memory_gb: float


async def work_for_root(ctx: ServiceContext, link: Link) -> None:
    """Serve the root until its federation finishes (the region's ends with it)."""
    fed, client = ctx.fed, link.client
    await _join(ctx, link)
    refused: set[tuple[int, float]] = set()
    while True:
        try:
            task = await asyncio.to_thread(client.task)
        except FederationFinished:
            await ctx.run(fed.root_finished)
            _event("root_finished")
            return
        except ZenfedError as e:  # a refusal of the poll itself: say so, try again later
            _event("root_refused_poll", logging.ERROR, error=e.problem, fix=e.fix)
            await asyncio.sleep(5.0)
            continue
        if task is None or (task.round, task.deadline) in refused:
            continue
        why = _cannot(task, fed.engine.state.privacy.clip_norm)
        if why:
            refused.add((task.round, task.deadline))
            _event("root_task_refused", logging.ERROR, round=task.round, reason=why)
            continue
        await _do(ctx, link, task)


def _cannot(task: Task, clip_norm: float | None) -> str:
    """Why the region cannot do ``task`` ("" if it can): the region clips with its own
    copy of the root's bound (``clip_norm``)."""
    if task.kind != "train":
        return f"a regional coordinator does not run '{task.kind}' tasks"
    if task.secagg is not None:
        return (
            "secure aggregation among regional coordinators at the root is not built: "
            "run secure aggregation within each region (its own [secagg]) instead"
        )
    if task.clip_norm != clip_norm:
        return (
            f"the root's task clips at {task.clip_norm} and this region at {clip_norm}: "
            "restart the region so it takes the root's [privacy] again"
        )
    return ""


async def _do(ctx: ServiceContext, link: Link, task: Task) -> None:
    """The region's round for ``task``, then its upload to the root."""
    fed, region = ctx.fed, link.region
    if task.round not in region.results:
        payload = await asyncio.to_thread(link.client.download, task.version, None)
        await ctx.run(lambda: fed.take_root_task(task, payload))
        _event("root_task", round=task.round, version=task.version[:12])
        while task.round not in region.results and time.time() < task.deadline:
            await asyncio.sleep(0.2)
    update = region.results.get(task.round)
    if update is None:  # the region's round made nothing in time: a straggler at the root
        _event("root_round_missed", logging.WARNING, round=task.round)
        return
    try:
        status = await asyncio.to_thread(link.client.upload, update)
    except ZenfedError as e:  # the root refused it (its round closed, say): nothing to redo
        _event("root_refused_update", logging.WARNING, round=task.round, error=e.problem)
        return
    _event("root_upload", round=task.round, status=status, examples=update.num_examples)


async def _join(ctx: ServiceContext, link: Link) -> None:
    """Enroll with the root, once this region has its own participants ready."""
    if link.token is None:
        return
    fed = ctx.fed
    minimum = max(1, fed.cfg.sampling.min_participants)
    while len(fed.engine.participants) < minimum:
        await asyncio.sleep(0.5)
    examples = await ctx.run(lambda: sum(fed.enrolled.values()))
    capacity: dict[str, Any] = {"memory_gb": link.memory_gb, "device": "region"}
    profile = {"examples": examples, "domain": "region"}
    token = link.token
    await asyncio.to_thread(link.client.enroll, token, link.name, capacity, profile)
    link.token = None
    _event("joined_root", name=link.name, examples=examples)


def _event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, event, extra={"fields": fields})
