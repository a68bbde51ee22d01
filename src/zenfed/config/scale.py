"""The sections of the config for training beyond synchronous rounds (issue 13): buffered
asynchronous aggregation and, in the simulation, participants' devices on a simulated
clock and Ray. Re-exported by ``zenfed.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from zenfed.config.base import _Frozen


class BufferedConfig(_Frozen):
    """``[buffered]``: buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022).

    Instead of rounds, up to ``concurrency`` participants train at any time, each from the
    newest version when it comes free; every ``k`` arrivals are aggregated into a new
    version (``run.rounds`` versions in all). An update that started ``s`` versions ago is
    weighed by ``staleness``: ``polynomial`` 1 / (1 + s) ** ``exponent`` (FedBuff's
    1 / sqrt(1 + s) by default), ``hinge`` 1 up to ``hinge_at`` and 1 / (1 + ``exponent`` x
    (s - ``hinge_at``)) beyond, or ``constant`` 1; one staler than ``max_staleness`` is
    refused. A participant contributes at most once to each buffer. A task not answered
    within ``service.round_timeout_s`` is dropped and its participant may take a new one.
    """

    enabled: bool = False
    k: int = 4
    concurrency: int | None = None  # None: every participant may train at once
    staleness: Literal["polynomial", "hinge", "constant"] = "polynomial"
    exponent: float = 0.5
    hinge_at: int = 2
    max_staleness: int = 8

    @model_validator(mode="after")
    def _check(self) -> BufferedConfig:
        if self.k < 1:
            raise ValueError("buffered.k (updates per aggregation) must be at least 1")
        if self.concurrency is not None and self.concurrency < self.k:
            raise ValueError(
                f"buffered.concurrency = {self.concurrency} trainers can never fill a buffer of "
                f"buffered.k = {self.k}: raise concurrency or lower k"
            )
        if self.exponent < 0 or self.hinge_at < 0 or self.max_staleness < 0:
            raise ValueError(
                "buffered.exponent, buffered.hinge_at and buffered.max_staleness must be >= 0"
            )
        return self


class DevicesConfig(_Frozen):
    """``[devices]``, simulation only: how long each participant's work takes on the
    simulated clock, so synchronous and asynchronous runs compare in simulated wall time.

    A task takes ``latency_s`` plus its local steps x ``step_seconds`` / the participant's
    speed; speeds are 1 (``equal``) or drawn once per participant from a lognormal of
    ``sigma`` (median 1) with the run's seed. ``available`` < 1: each participant is
    online that fraction of every ``period_s`` (at a phase drawn with the seed) and takes
    tasks only then (a task it began finishes). Off (``enabled = false``): work takes no
    simulated time, as before.
    """

    enabled: bool = False
    speed: Literal["equal", "lognormal"] = "lognormal"
    sigma: float = 1.0
    step_seconds: float = 1.0
    latency_s: float = 0.0
    available: float = 1.0
    period_s: float = 3600.0

    @model_validator(mode="after")
    def _check(self) -> DevicesConfig:
        if self.sigma < 0 or self.step_seconds <= 0 or self.latency_s < 0:
            raise ValueError(
                "devices.sigma and devices.latency_s must be >= 0, devices.step_seconds > 0"
            )
        if not 0.0 < self.available <= 1.0 or self.period_s <= 0:
            raise ValueError("devices.available must be in (0, 1] and devices.period_s > 0")
        return self


class RayConfig(_Frozen):
    """``[ray]``: where and how ``run.backend = "ray"`` runs the participants.

    ``address``: an existing cluster ("auto", "ray://host:10001"); none starts a local Ray
    instance for the run. ``actors``: how many (0: the cluster's CPUs over
    ``cpus_per_actor``), each holding the model once and a share of the participants,
    with ``cpus_per_actor`` CPUs (its torch threads) and ``gpus_per_actor`` GPUs.
    """

    address: str | None = None
    actors: int = 0
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> RayConfig:
        if self.actors < 0:
            raise ValueError("ray.actors must be 0 (as many as the CPUs allow) or more")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("ray.cpus_per_actor must be positive, ray.gpus_per_actor >= 0")
        return self


class RegionsConfig(_Frozen):
    """``[regions]`` at a root whose participants are regional coordinators
    (``zenfed serve --upstream``): each region gets the root's task every round and
    Poisson-samples its own participants with ``fraction``, the rate the privacy
    accountant composes (a participant belongs to one region).

    Under ``[privacy]`` each region clips its participants' updates to the root's bound
    and sends their sum with their count; the root divides by the fixed denominator
    ``fraction`` x the participants the regions report. The Gaussian noise is added where
    ``noise`` says: ``"root"`` (one draw on the sum over every region: the flat
    federation's noise; the regions see their participants' clipped updates, the root
    only sums), or ``"region"`` (each region noises its own sum before it leaves, so the
    root never sees an un-noised sum; the total noise variance is the number of regions
    times higher). Either way each round is one (``fraction``, z) release per participant.
    """

    enabled: bool = False
    fraction: float = 1.0
    noise: Literal["root", "region"] = "root"

    @model_validator(mode="after")
    def _check(self) -> RegionsConfig:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("regions.fraction (each region's sampling rate) must be in (0, 1]")
        return self
