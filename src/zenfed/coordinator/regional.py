"""A regional coordinator: a coordinator to its own participants and one participant (one
identity) to the root (``zenfed serve --upstream URL``).

    region = Region(identity, codec)
    port = CoordinatorPort(engine, journal, clock, region=region)
    region.task = root_task            # the upstream loop: the root's task, its version adopted
    port.tick()                        # opens the region's round from the root's version ...
    port.tick()                        # ... and closes it: "forwarded"
    region.results[root_task.round]    # the update to send the root

The root's task opens the region's round: the root's version (stored as downloaded, so
the region's participants fetch the bytes the root published and check the same hash)
becomes the region's, and its participants train from it, within the region's own
sampling, deadlines and, if configured, secure aggregation. When the region's round
closes, its aggregate (the weighted mean of its participants' updates, screened as the
region's rules say) goes to the root as one update whose weight is the region's total
weight, encoded with the federation's codec: the root's weighted mean over its regions is
then the weighted mean over every participant, up to floating-point rounding. The region
commits no version of its own; the root's next version opens its next round.

Differential privacy over regions (``[regions]`` at the root, ``config.RegionsConfig``):
the region clips each participant's update to the root's bound and weighs each 1, so its
update is the mean of ``num_examples`` clipped updates; it reports its ``pool_size``; the
noise is added at the root on the total (``regions.noise = "root"``) or by each region on
its own sum before it leaves (``"region"``, ``PrivacyPolicy.forwarded``), and the root
accounts one (regions.fraction, z) release per round.

Not built: secure aggregation among the regions at the root, adaptive clipping over
regions, and error feedback of the region's own re-encoding (a lossy codec loses at the
region what it drops). The config refuses the first two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from zenfed.aggregate import Aggregate
from zenfed.compress import Pipeline
from zenfed.coordinator.state import CoordinatorState
from zenfed.protocol.messages import GlobalVersion, Task, Update
from zenfed.tensors import Tensors


@dataclass
class Region:
    """What a regional coordinator's port needs to know of the root: the task it works on
    and what it sent (or will send) back."""

    identity: str  # the region's participant id at the root
    codec: Pipeline
    task: Task | None = None  # the root's training task the region works on
    results: dict[int, Update] = field(default_factory=dict)  # root round -> its update
    finished: bool = False  # the root's federation has finished

    def may_open(self, round_now: int, version: str) -> bool:
        """Whether the region's round for the root's task may open: a task is held, its
        version adopted, and nothing has been forwarded for its round yet."""
        t = self.task
        return (
            t is not None
            and t.round not in self.results
            and t.round == round_now
            and t.version == version
        )

    def update(self, agg: Aggregate, updates: list[Update], pool: int) -> Update:
        """The root's update for the held task: the region's weighted mean, weighted by
        its total weight (under DP: the count of clipped updates), with its participants'
        statistics summed and the ``pool`` it samples from."""
        t = self.task
        if t is None:
            raise ValueError("no root task is held")
        parts = self.codec.encode(agg.mean(), shared_seed=t.codec_seed, private_seed=t.seed)
        total = sum(u.num_examples for u in updates) or 1
        return Update(
            round=t.round,
            participant=self.identity,
            base_version=t.version,
            payload=self.codec.to_bytes(parts),
            num_examples=max(1, round(agg.weight)),
            examples_seen=sum(u.examples_seen for u in updates),
            num_tokens=sum(u.num_tokens for u in updates),
            seconds=max((u.seconds for u in updates), default=0.0),
            train_loss=sum(u.train_loss * u.num_examples for u in updates) / total,
            steps=max((u.steps for u in updates), default=0),
            pool_size=max(1, pool),
        )


def adopted(
    state: CoordinatorState, version: GlobalVersion, tensors: Tensors, server_round: int
) -> CoordinatorState:
    """``state`` with the root's ``version`` (``tensors``) current, for the root's round
    ``server_round``: what a regional coordinator's participants train from next."""
    return replace(
        state,
        round=server_round,
        params=dict(tensors),
        public=None,
        broadcasts=[],
        versions=[*state.versions[-8:], version],
    )
