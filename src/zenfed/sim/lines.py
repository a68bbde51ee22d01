"""A simulation of several model lines ([lines]): each line a federation of its members.

    summary = run_simulation(cfg_with_two_lines, "runs/x")   # (through this module)
    summary["lines"]["legal"]["fed_loss"]

Lines share the roster and nothing else, so the simulation runs them one after another,
each through the same engine and port as a one-line run (``Coordinator(line=...)``) over
the world's participants of that line, into its own run folder ``lines/<name>/``
(checkpoint, versions and their manifests, metrics, loss plot, adapter): a line's
versions are exactly those of a simulation of its members alone, and ``zenfed export
--run <out>/lines/<name>`` exports one. The run folder's ``summary.json`` holds every
line's summary. ``resume`` continues each line from its checkpoint (a line that had not
started starts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from zenfed.config import FederationConfig
from zenfed.errors import ZenfedError
from zenfed.sim.folders import LINES, init_run_dir
from zenfed.sim.progress import Progress
from zenfed.sim.setup import World
from zenfed.store.checkpoint import atomic_write

RunLine = Callable[[str, World, Path, bool], dict[str, Any]]


def line_world(world: World, cfg: FederationConfig, line: str) -> World:
    """``world`` with only the participants (and data) of ``line``."""
    members = {n: p for n, p in world.participants.items() if cfg.lines.line_of(n) == line}
    if not members:
        raise ZenfedError(
            f"line '{line}' has no participants in this simulation",
            fix="assign it some in [lines] assign, or drop it from lines.names",
        )
    data = [d for d in world.data if d.name in members]
    return replace(world, participants=members, data=data)


def run_lines(
    cfg: FederationConfig,
    out: Path,
    world: World,
    run_line: RunLine,
    *,
    resume: bool,
    progress: Progress,
) -> dict[str, Any]:
    """Every line of ``cfg`` by ``run_line(line, its world, its folder, resuming)``; the
    lines' summaries together (also saved as ``summary.json``)."""
    worlds = {line: line_world(world, cfg, line) for line in cfg.lines.names}  # before writing
    if not resume:
        init_run_dir(out, cfg)
        (out / LINES).mkdir()
    summaries: dict[str, Any] = {}
    for line, members in worlds.items():
        folder = out / LINES / line
        progress.note(f"line '{line}': {', '.join(sorted(members.participants))}")
        again = resume and (folder / "checkpoint.safetensors").is_file()
        summaries[line] = run_line(line, members, folder, again)
        if "stopped_after" in summaries[line]:
            return {"lines": summaries, "stopped_after": summaries[line]["stopped_after"]}
    summary = {"lines": summaries, "seconds": sum(s["seconds"] for s in summaries.values())}
    text = json.dumps(summary, indent=2).encode()
    atomic_write(out / "summary.json", lambda f: f.write(text))
    return summary
