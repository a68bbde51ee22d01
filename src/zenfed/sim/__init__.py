"""Simulation: many virtual participants in one process, through the real engine."""

from zenfed.sim.runner import BASELINES, efficiency, run_simulation

__all__ = ["BASELINES", "efficiency", "run_simulation"]
