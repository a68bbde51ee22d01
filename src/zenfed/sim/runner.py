"""Run a federation in one process: N virtual participants, the real Coordinator and
Participant classes, an in-memory transport, a virtual clock.

    summary = run_simulation(load_config("examples/demo.toml"), baselines=("centralized",))

A round here is what it is in a deployment: the coordinator's port ticks (opens the round,
advances secure-aggregation stages, closes it when its trigger says so), and every
participant runs its one loop (``zenfed.participant.loop``) against the port. When no
participant can make progress and nothing is due, the virtual clock jumps to the next
deadline, so stragglers and dropouts end a round exactly as the service's wall clock
would end it.

Writes into the run folder: ``config.json``, ``checkpoint.safetensors`` after every round
(``resume`` continues a killed run from it), ``metrics.jsonl`` (one row per round),
``loss.png``, ``summary.json`` and the final ``adapter/`` (a PEFT folder).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from zenfed.compress.downlink import full_payload, receive
from zenfed.config import FederationConfig
from zenfed.coordinator.engine import Coordinator
from zenfed.coordinator.port import CoordinatorPort
from zenfed.coordinator.state import CoordinatorState
from zenfed.coordinator.trust import find_version, rollback, trust_parts
from zenfed.errors import ZenfedError
from zenfed.model.adapter import export_adapter
from zenfed.participant.agent import Participant
from zenfed.participant.state import ParticipantState
from zenfed.privacy.dp import PrivacyBudgetExceeded
from zenfed.protocol.messages import GlobalVersion
from zenfed.protocol.secagg import STAGES
from zenfed.sim import baselines as bl
from zenfed.sim.attacks import check_tolerance, install_attack
from zenfed.sim.folders import CHECKPOINT, LINES, check_run_dir, init_run_dir
from zenfed.sim.lines import run_lines
from zenfed.sim.progress import Progress
from zenfed.sim.report import plot_losses, sample_generations
from zenfed.sim.setup import World, build_world
from zenfed.store.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from zenfed.transport.devices import Devices
from zenfed.transport.inmemory import InMemoryTransport

BASELINES = ("centralized", "local")


def run_simulation(
    cfg: FederationConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    fresh: bool = False,
    baselines: Sequence[str] = (),
    progress: Progress | None = None,
    stop_after: int | None = None,
    world: World | None = None,
) -> dict[str, Any]:
    """Run (or continue) the federation of ``cfg``; returns the summary (also saved).
    With several model lines ([lines]) each line runs as its own federation of its members
    into ``lines/<name>/`` of the run folder (``sim.lines``)."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ZenfedError(f"unknown baseline '{unknown[0]}'", fix=f"one of {', '.join(BASELINES)}")
    out = Path(out_dir or cfg.run.out_dir)
    holds = LINES if cfg.lines.several else CHECKPOINT  # what a run of it leaves in ``out``
    check_run_dir(out, cfg, resume=resume, fresh=fresh, holds=holds)
    progress = progress or Progress(enabled=False)
    t_start = time.perf_counter()
    world = world or build_world(cfg)  # every input error surfaces before anything is written
    if not world.fits(cfg):
        raise ZenfedError(
            "the simulation world was built for another model, adapter, data or seed",
            fix="build_world(cfg) for this config",
        )
    run = _Run(cfg, out, resume, baselines, progress, stop_after, t_start, cfg.lines.names[0])
    if cfg.lines.several:

        def one_line(line: str, members: World, folder: Path, again: bool) -> dict[str, Any]:
            check_run_dir(folder, cfg, resume=again, fresh=True)
            return _simulate(replace(run, out=folder, resume=again, line=line), members)

        return run_lines(cfg, out, world, one_line, resume=resume, progress=progress)
    return _simulate(run, world)


def _simulate(run: _Run, world: World) -> dict[str, Any]:
    """One line's federation over ``world``'s participants."""
    cfg = run.cfg
    if cfg.run.backend == "ray":  # the participants on Ray actors, the rest as here
        from zenfed.sim.ray_backend import RayPool

        with RayPool(cfg, list(world.participants)) as pool:
            # stand-ins with the surface of a Participant that the runner uses
            stand_ins = cast(dict[str, Participant], pool.participants)
            return _federate(run, replace(world, participants=stand_ins), pool)
    return _federate(run, world, None)


@dataclass(frozen=True)
class _Run:
    cfg: FederationConfig
    out: Path
    resume: bool
    baselines: Sequence[str]
    progress: Progress
    stop_after: int | None
    t_start: float
    line: str  # the model line it runs


def _federate(run: _Run, world: World, pool: Any) -> dict[str, Any]:
    """The rounds over ``world``'s participants: in this process, or on ``pool``'s Ray
    actors (``sim.ray_backend``)."""
    cfg, out, resume, baselines = run.cfg, run.out, run.resume, run.baselines
    progress, stop_after, t_start = run.progress, run.stop_after, run.t_start
    # The coordinator checks the codec settings against the adapter's shapes: before writing.
    gate, screen = trust_parts(cfg, world.validation_loss(cfg))
    coord = Coordinator(
        cfg,
        world.initial,
        {d.name: len(d.train) for d in world.data},
        verify_keys={k: identity_key(p) for k, p in world.participants.items()},
        screen=screen,
        line=run.line,
    )
    attackers = install_attack(cfg, world.participants)  # [attack]: who misbehaves, and how
    n = len(world.participants)
    check_tolerance(len(attackers), n, cfg.sampling.expected_size(n), coord.rule)
    if not resume:
        init_run_dir(out, cfg)
    history: list[dict[str, Any]] = []
    world.configure(cfg)  # a world may be reused with another config
    for p in world.participants.values():
        p.state = ParticipantState()  # and every run starts clean
    if resume:
        state, states, history = load_run(out)
        coord.adopt(state)
        for name, st in states.items():
            world.participants[name].state = st
    clock = SimClock()
    if resume and history:
        clock.t = float(history[-1].get("sim_time", 0.0))
    port = CoordinatorPort(coord, clock=clock, wait_for_minimum=False, gate=gate)
    devices = None
    if cfg.devices.enabled:  # work takes simulated time
        devices = Devices(cfg.devices, world.participants, cfg.run.seed)
    extra: dict[str, Any] = {} if pool is None else {"pool": pool}
    transport = (InMemoryTransport if pool is None else _ray_transport())(
        port,
        world.participants,
        drop=_dropouts(cfg, coord),
        devices=devices,
        clock=clock,
        shuffle=cfg.run.seed if cfg.buffered.enabled else None,  # who comes free first
        **extra,
    )
    if not history:
        history.append({"round": 0, **_evaluate(port, transport, progress)})
        save_version(out, coord)
    rounds = cfg.run.rounds
    progress.start_rounds(rounds, done=coord.state.round)
    for r in range(coord.state.round, rounds):
        row = run_round(port, transport, clock, progress)
        if (r + 1) % cfg.run.eval_every == 0 or r + 1 == rounds:
            t_eval = time.perf_counter()
            row.update(_evaluate(port, transport, progress))
            row["eval_seconds"] = time.perf_counter() - t_eval
        history.append(row)
        save_version(out, coord)
        parts = world.participants
        kept = pool.states() if pool else {k: p.state.to_bytes() for k, p in parts.items()}
        save_checkpoint(out / "checkpoint.safetensors", coord.state.to_bytes(), kept, history)
        _write_metrics(out / "metrics.jsonl", history)
        progress.round_done(history[-1])
        if stop_after is not None and r + 1 >= stop_after:
            return {"stopped_after": r + 1, "history": history}
    return _finish(
        cfg, out, world, coord, history, baselines, progress, time.perf_counter() - t_start
    )


def _ray_transport() -> type[InMemoryTransport]:
    from zenfed.sim.ray_backend import RayTransport

    return RayTransport


class SimClock:
    """The simulation's clock: it moves only when told to (to the next deadline)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_round(
    port: CoordinatorPort, transport: InMemoryTransport, clock: SimClock, progress: Progress
) -> dict[str, Any]:
    """One training round: the port opens it, every participant's loop runs until all of
    them wait, the port ticks (a stage closes, or the round), and when nothing can move
    the clock jumps to the next deadline."""
    t0 = time.perf_counter()
    coord = port.engine
    r = coord.state.round
    transport.failures.clear()
    what = port.tick()
    if what == "exhausted":
        raise PrivacyBudgetExceeded(port.exhausted, fix="release the current version")
    if what == "skipped":
        progress.note(f"round {r + 1} aborted: {coord.last_skip}")
        return {"round": r + 1, "aborted": coord.last_skip, "seconds": time.perf_counter() - t0}
    info = coord.open_round_info
    assert info is not None
    cohort, secure = info[1], port.stages.running(coord.current)
    size = len(cohort)
    if coord.policy.closes_on_arrival:  # who trains is decided as participants come free
        cohort, size = frozenset(coord.participants), round(coord.policy.holders(len(cohort)))
    progress.start_phase(f"round {r + 1}: training", size)
    while what not in ("closed", "aborted", "rejected"):
        transport.settle(progress.advance_phase)
        what = port.tick()  # (a buffer its k-th upload closed, too)
        if what == "idle":  # nobody can move and nothing is due: time passes
            due = min(port.next_deadline(), transport.next_event())
            if not due < float("inf"):
                raise ZenfedError(f"round {r + 1} cannot end", fix="report this as a bug")
            clock.t = max(clock.t, due)
    failures = {p: e for p, e in transport.failures.items() if p in cohort}
    if what == "rejected":  # the gate kept the current version; the engine moved on
        progress.note(f"round {r + 1} rejected: {port.last_reason}")
        return {"round": r + 1, "rejected": port.last_reason, "seconds": time.perf_counter() - t0}
    if what == "aborted":  # the port moved on to the next round number
        if len(failures) == len(cohort) and not secure:
            raise ZenfedError(
                f"round {r + 1}: every participant failed; first: {next(iter(failures.values()))}",
                fix="see the error above",
            )
        progress.note(f"round {r + 1} aborted: {port.last_reason}")
        return {"round": r + 1, "aborted": port.last_reason, "seconds": time.perf_counter() - t0}
    version = port.last_version
    assert version is not None
    quarantined = sorted(set(coord.state.quarantined) & cohort)
    return {
        "round": r + 1,
        "version": version.id[:16],
        **version.metrics,
        **({"quarantined": quarantined} if quarantined else {}),
        "traffic": coord.last_traffic,  # bytes up and down per participant
        "failures": failures,
        "seconds": time.perf_counter() - t0,
        "sim_time": clock.t,  # the simulated clock when the version was made
    }


def load_run(
    out: Path,
) -> tuple[CoordinatorState, dict[str, ParticipantState], list[dict[str, Any]]]:
    """The coordinator state, participant states and history in a run folder's checkpoint."""
    coord, parts, history = load_checkpoint(out / "checkpoint.safetensors")
    states = {k: ParticipantState.from_bytes(v) for k, v in parts.items()}
    return CoordinatorState.from_bytes(coord), states, history


def rollback_run(out: str | Path, to: str) -> GlobalVersion:
    """Republish version ``to`` of the run in ``out`` as a new version (``zenfed rollback
    --run``): its checkpoint then holds the rollback, which ``--resume`` continues from
    and ``zenfed export`` exports."""
    out = Path(out)
    if not (out / "checkpoint.safetensors").is_file():
        raise ZenfedError(f"'{out}' holds no simulation run", fix="give a run folder (--run)")
    state, parts, history = load_checkpoint(out / "checkpoint.safetensors")
    st = CoordinatorState.from_bytes(state)
    target = find_version(st, to)
    path = out / "versions" / f"{target.id}.safetensors"
    if not path.is_file():
        raise ZenfedError(
            f"version {target.id[:12]}'s tensors are not in {out / 'versions'}",
            fix="roll back to a version this run saved",
        )
    result = rollback(st, to, receive(path.read_bytes(), None, None, target.id))
    history.append({"round": result.version.round + 1, "rollback_of": target.id[:16]})
    data = full_payload(result.state.published, result.version)
    atomic_write(out / "versions" / f"{result.version.id}.safetensors", lambda f: f.write(data))
    save_checkpoint(out / "checkpoint.safetensors", result.state.to_bytes(), parts, history)
    _write_metrics(out / "metrics.jsonl", history)
    return result.version


def save_version(out: Path, coord: Coordinator) -> None:
    """The current version's tensors as published, in ``versions/<id>.safetensors`` (what
    ``zenfed rollback --run`` republishes), and its manifest beside them
    (``<id>.manifest.json``, the version log); kept once per version."""
    path = out / "versions" / f"{coord.version.id}.safetensors"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        data = full_payload(coord.state.published, coord.version)
        atomic_write(path, lambda f: f.write(data))
    m = coord.last_manifest
    if m is not None and m.version == coord.version.id:
        text = json.dumps(m.to_dict(), indent=2).encode()
        atomic_write(path.with_suffix(".manifest.json"), lambda f: f.write(text))


def identity_key(p: Participant) -> bytes:
    """A participant's raw Ed25519 public key (what the coordinator verifies it by)."""
    return p.public_key


def _dropouts(cfg: FederationConfig, coord: Coordinator) -> Callable[[str, str], bool]:
    """Injected dropouts: each sampled participant drops with probability run.dropout, at a
    stage drawn uniformly (seeded by the run's seed, the round and the participant)."""
    p = cfg.run.dropout

    def drop(stage: str, pid: str) -> bool:
        if p <= 0:
            return False
        rng = np.random.default_rng([cfg.run.seed, coord.state.round, 3, *pid.encode()])
        if rng.random() >= p:
            return False
        stages = STAGES if cfg.secagg.enabled else ("masked_input",)
        return stage == stages[int(rng.integers(len(stages)))]

    return drop


def _evaluate(
    port: CoordinatorPort, transport: InMemoryTransport, progress: Progress
) -> dict[str, Any]:
    ev = port.open_evaluation()
    progress.start_phase("evaluating", len(ev.tasks))
    transport.settle(progress.advance_phase)
    port.close_evaluation()
    return {
        **ev.summary(),
        "own_loss": {k: r.loss_sum / max(1, r.num_tokens) for k, r in ev.reports.items()},
    }


def _finish(
    cfg: FederationConfig,
    out: Path,
    world: World,
    coord: Coordinator,
    history: list[dict[str, Any]],
    baselines: Sequence[str],
    progress: Progress,
    seconds: float,
) -> dict[str, Any]:
    final = history[-1]
    l0 = history[0]["union_loss"]
    summary: dict[str, Any] = {
        "rounds": cfg.run.rounds,
        "initial_loss": l0,
        "fed_loss": final["union_loss"],
        "fed_eval_loss": final["eval_loss"],
        "fed_steps": int(sum(h.get("steps", 0) for h in history)),
        **_traffic(history),
        "seconds": seconds,
        "version": coord.version.id,
        "aborted_rounds": sum(1 for h in history if "aborted" in h),
        "rejected_rounds": sum(1 for h in history if "rejected" in h),
        "quarantined": dict(coord.state.quarantined),
        **_privacy_summary(cfg, coord),
    }
    tb = time.perf_counter()
    if "centralized" in baselines:
        progress.note("centralized baseline: pooled data, same optimizer and step count")
        c = bl.centralized(world, cfg, total_steps=summary["fed_steps"])
        summary["central_loss"] = c["loss"]
        summary["centralized_efficiency"] = efficiency(l0, final["union_loss"], c["loss"])
    if "local" in baselines:
        progress.note("local-only baseline: each participant alone")
        steps = max(1, summary["fed_steps"] // max(1, len(world.data)))
        loc = bl.local_only(world, cfg, steps=steps)
        summary["local_only_loss"] = loc["loss"]
        summary["local_own_loss"] = loc["own_loss"]
        summary["fed_own_loss"] = sum(final["own_loss"].values()) / len(final["own_loss"])
        summary["local_only"] = loc["participants"]
    summary["baseline_seconds"] = time.perf_counter() - tb
    final_tensors = coord.fetch(coord.version.id)
    export_adapter(world.model, final_tensors, out / "adapter")
    if "privacy" in summary:  # the released adapter carries its guarantee
        text = json.dumps(summary["privacy"], indent=2).encode()
        atomic_write(out / "adapter" / "zenfed_privacy.json", lambda f: f.write(text))
    if cfg.run.sample_prompts:
        summary["samples"] = sample_generations(world, final_tensors, cfg.run.sample_prompts)
    plot_losses(history, summary, out / "loss.png")
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary


def _privacy_summary(cfg: FederationConfig, coord: Coordinator) -> dict[str, Any]:
    """The released model's guarantee: (epsilon, delta) and how it was obtained."""
    pc, z = cfg.privacy, coord.privacy.noise_multiplier
    if z is None:
        return {}
    return {
        "epsilon": coord.epsilon(),
        "privacy": {
            "unit": "participant (all of one participant's data)",
            "epsilon": coord.epsilon(),
            "delta": pc.target_delta,
            "accountant": f"dp-accounting {pc.accountant}",
            "noise_multiplier": z,
            "sampling_rate": coord.privacy.sampling_rate,  # (1 for DP-FTRL's trees)
            "mechanism": pc.mechanism,
            "rounds_released": len(coord.state.privacy.rounds),
            "clip_norm": coord.state.privacy.clip_norm,
            "adaptive_clipping": pc.adaptive_clipping,
            "noise": pc.noise,
            "secure_aggregation": cfg.secagg.enabled,
        },
    }


def _traffic(history: list[dict[str, Any]]) -> dict[str, float]:
    """Bytes over the whole run, and the upload's ratio to dense float32 deltas."""
    evals = sum(h.get("eval_bytes_down", 0.0) for h in history)
    up, down, dense = (
        sum(h.get(k, 0.0) for h in history) for k in ("bytes_up", "bytes_down", "dense_bytes_up")
    )
    return {
        "upload_bytes": up,
        "download_bytes": down + evals,
        "eval_download_bytes": evals,
        "dense_upload_bytes": dense,
        "compression_ratio": dense / up if up else float("nan"),
    }


def efficiency(initial: float, fed: float, central: float) -> float:
    """Centralized efficiency (L0 - L_fed) / (L0 - L_central)."""
    return (initial - fed) / (initial - central) if initial != central else float("nan")


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(h) + "\n" for h in history).encode()
    atomic_write(path, lambda f: f.write(lines))
