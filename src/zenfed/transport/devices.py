"""Simulated devices: how long each participant's work takes on the simulation's clock
(``[devices]``), so synchronous and asynchronous federations compare in wall time.

    devices = Devices(cfg.devices, names=["p000", "p001"], seed=cfg.run.seed)
    devices.duration("p001", steps=5)        # latency + steps * step_seconds / speed
    devices.online("p001", t)                # inside its availability window at t?
    devices.next_online("p001", t)           # when it is online next (t if now)

Pure: speeds and availability phases are drawn once per participant from the run's seed
and its name, so a participant keeps its device however many others there are.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np

from zenfed.config import DevicesConfig


class Devices:
    """Every participant's speed and availability window."""

    def __init__(self, cfg: DevicesConfig, names: Iterable[str], seed: int) -> None:
        self.cfg = cfg
        self.speed: dict[str, float] = {}
        self.phase: dict[str, float] = {}  # where its online window starts in each period
        for name in names:
            rng = np.random.default_rng([seed, 4, zlib.crc32(name.encode())])
            lognormal = float(np.exp(cfg.sigma * rng.standard_normal()))
            self.speed[name] = lognormal if cfg.speed == "lognormal" else 1.0
            self.phase[name] = float(rng.random()) * cfg.period_s

    def duration(self, name: str, steps: int) -> float:
        """Simulated seconds from taking a task to its update's arrival."""
        return self.cfg.latency_s + steps * self.cfg.step_seconds / self.speed[name]

    def online(self, name: str, t: float) -> bool:
        """Whether ``name`` is inside its availability window at ``t``."""
        if self.cfg.available >= 1.0:
            return True
        into = (t - self.phase[name]) % self.cfg.period_s
        return into < self.cfg.available * self.cfg.period_s

    def next_online(self, name: str, t: float) -> float:
        """The first time at or after ``t`` that ``name`` is online."""
        if self.online(name, t):
            return t
        period = self.cfg.period_s
        into = (t - self.phase[name]) % period
        later = t + (period - into)
        return later if math.isfinite(later) else math.inf
