"""Ray for simulations that outgrow one process: ``run.backend = "ray"``.

    with RayPool(cfg, names) as pool:                  # actors up; shut down after
        transport = RayTransport(port, pool.participants, pool=pool, ...)

Each actor (``ParticipantHost``, with ``[ray]`` cpus_per_actor and gpus_per_actor) builds
the world once, one model and the data, and hosts a share of the participants: the same
``Participant`` class as in process. The driver keeps the coordinator, its port and every
participant's loop, in the in-process order; a ``RemoteParticipant`` stands in for each
participant. Before the loops advance, every participant that has a plaintext training
or an evaluation task starts it on its actor, with the version bytes it needs downloaded
through the port (counted as in process); each loop then collects its result in the usual
order, so the coordinator receives the same updates in the same order and a seed gives
the same versions as in process (a test). Secure rounds and buffered aggregation run
through the actors one task at a time (their order of work is part of the protocol). A
simulated attack is refused: its hooks live in the driver's participants.

``[ray] address`` joins an existing cluster ("auto", or "ray://host:10001"); without one
a local Ray instance with this machine's cores starts and stops with the run. An address
that does not answer is a ZenfedError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from zenfed.config import FederationConfig
from zenfed.errors import ZenfedError
from zenfed.participant.agent import Participant
from zenfed.participant.state import ParticipantState
from zenfed.protocol.messages import EvalReport, Task, Update
from zenfed.protocol.secagg import AdvertiseKeys, UnmaskRequest
from zenfed.transport.inmemory import InMemoryTransport

Download = Callable[[str, str | None], bytes]
# Builds the participants an actor hosts from the config (None: ``build_world``'s); it
# must pickle (a module-level function, or a partial of one).
Build = Callable[[FederationConfig], Mapping[str, Participant]] | None


class ParticipantHost:
    """A Ray actor's share of the participants, over one model (``ray.remote`` is applied
    by ``RayPool``, so importing this module does not import Ray)."""

    def __init__(self, cfg: dict[str, Any], names: list[str], threads: int, build: Build) -> None:
        import torch

        from zenfed.config import parse_config
        from zenfed.sim.setup import build_world

        torch.set_num_threads(threads)
        federation = parse_config(cfg)
        everyone = build(federation) if build else build_world(federation).participants
        self.parts = {n: everyone[n] for n in names}

    def public_keys(self) -> dict[str, bytes]:
        """Each hosted participant's Ed25519 identity."""
        return {n: p.public_key for n, p in self.parts.items()}

    def held(self, names: list[str]) -> dict[str, str | None]:
        """The version each of ``names`` holds (what it would download a difference from)."""
        return {n: self.parts[n].holding() for n in names}

    def work(self, name: str, task: Task, payload: bytes, held: str | None) -> Any:
        """``name``'s training or evaluation of ``task`` (``payload``: the version as the
        driver downloaded it from ``held``)."""

        def download(version: str, have: str | None) -> bytes:
            if (version, have) != (task.version, held):
                raise ZenfedError(
                    f"participant '{name}' asked for {version[:12]} from {have}, not what the "
                    "driver downloaded",
                    fix="report this bug",
                )
            return payload

        p = self.parts[name]
        return p.train(task, download) if task.kind == "train" else p.evaluate(task, download)

    def call(self, name: str, method: str, *args: Any) -> Any:
        """Any other method of a hosted participant (the secure-aggregation stages)."""
        return getattr(self.parts[name], method)(*args)

    def get_state(self, name: str) -> bytes:
        """A participant's state, as checkpoints hold it."""
        return self.parts[name].state.to_bytes()

    def states(self) -> dict[str, bytes]:
        """Every hosted participant's state (one call for a checkpoint)."""
        return {n: p.state.to_bytes() for n, p in self.parts.items()}

    def set_state(self, name: str, data: bytes) -> None:
        """Restore (or reset) a participant's state."""
        self.parts[name].state = ParticipantState.from_bytes(data)


class RemoteParticipant:
    """A participant on a Ray actor, as the driver's loop and runner see it."""

    tamper = None  # attacks are refused under Ray

    def __init__(self, name: str, host: Any, public_key: bytes) -> None:
        self.name, self.host, self.public_key = name, host, public_key
        self.started: dict[Task, Any] = {}  # tasks begun ahead of the loop: their futures

    def start(self, task: Task, payload: bytes, held: str | None) -> None:
        """Begin ``task`` on the actor now; the loop collects it later."""
        self.started[task] = self.host.work.remote(self.name, task, payload, held)

    def _result(self, task: Task, download: Download) -> Any:
        import ray

        ref = self.started.pop(task, None)
        if ref is None:  # not begun ahead (a secure round): begin it now
            held = ray.get(self.host.held.remote([self.name]))[self.name]
            payload = b"" if held == task.version else download(task.version, held)
            ref = self.host.work.remote(self.name, task, payload, held)
        return ray.get(ref)

    def train(self, task: Task, download: Download) -> Update:
        """The update, trained on the actor."""
        update: Update = self._result(task, download)
        return update

    def evaluate(self, task: Task, download: Download) -> EvalReport:
        """The evaluation report, measured on the actor."""
        report: EvalReport = self._result(task, download)
        return report

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(self.host.call.remote(self.name, method, *args))

    def secagg_advertise(self, task: Task) -> AdvertiseKeys:
        """Secure aggregation's first stage, on the actor."""
        keys: AdvertiseKeys = self._call("secagg_advertise", task)
        return keys

    def secagg_share(self, keys: Any, identities: Mapping[str, bytes]) -> Any:
        """The shares stage, on the actor."""
        return self._call("secagg_share", keys, identities)

    def secagg_receive(self, shares: Any) -> None:
        """The inbox of shares, to the actor."""
        self._call("secagg_receive", shares)

    def secagg_unmask(self, request: UnmaskRequest) -> Any:
        """The unmasking stage, on the actor."""
        return self._call("secagg_unmask", request)

    @property
    def state(self) -> ParticipantState:
        """The participant's state (fetched from its actor)."""
        import ray

        return ParticipantState.from_bytes(ray.get(self.host.get_state.remote(self.name)))

    @state.setter
    def state(self, value: ParticipantState) -> None:
        import ray

        ray.get(self.host.set_state.remote(self.name, value.to_bytes()))


class RayPool:
    """The actors of one run, and the world with their participants' proxies."""

    def __init__(self, cfg: FederationConfig, names: list[str], build: Build = None) -> None:
        if cfg.attack.kind != "none":
            raise ZenfedError(
                "a simulated [attack] with run.backend = 'ray' is not built (its hooks live in "
                "the driver's participants)",
                fix="run the attack with run.backend = 'process'",
            )
        self.cfg, self.names, self.build, self.started_ray = cfg, sorted(names), build, False
        self.hosts: list[Any] = []
        self.participants: dict[str, RemoteParticipant] = {}

    def __enter__(self) -> RayPool:
        import ray

        rc = self.cfg.ray
        if not ray.is_initialized():
            _probe(rc.address)  # Ray itself would wait minutes for an address that is wrong
            try:
                ray.init(
                    address=rc.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ZenfedError(
                    f"Ray at '{rc.address}' does not answer: {str(e)[:200]}",
                    fix="check [ray] address (or --ray-address), or leave it out to start a "
                    "local Ray instance",
                ) from e
            self.started_ray = True
        try:
            self._start_hosts()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_hosts(self) -> None:
        import ray

        rc, names = self.cfg.ray, self.names
        cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        n = rc.actors or max(1, int(cpus // rc.cpus_per_actor))
        n = min(n, len(names))
        host = ray.remote(num_cpus=rc.cpus_per_actor, num_gpus=rc.gpus_per_actor)(ParticipantHost)
        shares = [names[i::n] for i in range(n)]
        threads = max(1, int(rc.cpus_per_actor))
        raw = self.cfg.model_dump(mode="json")
        self.hosts = [host.remote(raw, share, threads, self.build) for share in shares]
        keys = ray.get([h.public_keys.remote() for h in self.hosts])
        self.participants = {
            name: RemoteParticipant(name, h, keys[i][name])
            for i, (h, share) in enumerate(zip(self.hosts, shares, strict=True))
            for name in share
        }

    def held(self, names: list[str]) -> dict[str, str | None]:
        """The version each participant in ``names`` holds, asked of each actor once."""
        import ray

        by_host: dict[Any, list[str]] = {}
        for n in names:
            by_host.setdefault(self.participants[n].host, []).append(n)
        out: dict[str, str | None] = {}
        for part in ray.get([h.held.remote(ns) for h, ns in by_host.items()]):
            out |= part
        return out

    def states(self) -> dict[str, bytes]:
        """Every participant's state (``ParticipantState.to_bytes``), one call per actor."""
        import ray

        out: dict[str, bytes] = {}
        for part in ray.get([h.states.remote() for h in self.hosts]):
            out |= part
        return out

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import ray

        for h in self.hosts:
            ray.kill(h)
        self.hosts = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False


class RayTransport(InMemoryTransport):
    """The in-memory transport whose participants work on Ray actors: the tasks that can
    run at once are begun on every actor before the loops collect them in order."""

    def __init__(self, *args: Any, pool: RayPool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool

    def settle(self, on_done: Callable[[str], None] | None = None) -> bool:
        """Begin what can run at once, then advance the loops as in process."""
        self._begin()
        return super().settle(on_done)

    def _begin(self) -> None:
        engine = self.port.engine
        # who works first is the protocol: participants that pull work as they come free
        if engine.policy.closes_on_arrival or self.order is not None:
            return
        ready: list[tuple[str, Task]] = []
        for pid in sorted(self.loops):
            task = self.ports[pid].task()  # what its loop's next ask will return
            proxy = self.pool.participants[pid]
            secure = task is not None and task.kind == "train" and task.secagg is not None
            if task is not None and not secure and task not in proxy.started:
                ready.append((pid, task))
        if not ready:
            return
        held = self.pool.held([pid for pid, _ in ready])
        for pid, task in ready:
            proxy = self.pool.participants[pid]
            have = held[pid]
            payload = b"" if have == task.version else self.ports[pid].download(task.version, have)
            proxy.start(task, payload, have)


def _probe(address: str | None, timeout_s: float = 5.0) -> None:
    """ZenfedError unless ``address`` ("host:port" or "ray://host:port"; None or "auto"
    are Ray's to find) accepts a connection within ``timeout_s``."""
    import socket

    if address is None or address == "auto":
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ZenfedError(
            f"[ray] address '{address}' is not host:port", fix='give "auto" or "host:port"'
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ZenfedError(
            f"Ray at '{address}' does not answer ({e})",
            fix="check [ray] address (or --ray-address), or leave it out to start a local "
            "Ray instance",
        ) from e
