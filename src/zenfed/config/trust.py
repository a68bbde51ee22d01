"""The trust sections of the config: simulated attacks, evaluation gates, poisoning
detection (issue 12). Re-exported by ``zenfed.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from zenfed.config.base import _Frozen


class AttackConfig(_Frozen):
    """Simulated misbehaviour (``zenfed.sim.attacks``); ``zenfed serve`` refuses it.

    ``fraction`` of the participants (chosen by the run's seed) or the named
    ``participants`` attack with ``kind``: ``sign_flip`` sends -scale x delta (1);
    ``scaling`` scale x delta (10); ``gaussian`` noise of std scale x the delta's RMS (10);
    ``alie`` the colluders' mean - z x their std (Baruch et al. 2019; ``z`` None: their
    z_max); ``ipm`` -epsilon x the colluders' mean (Xie et al. 2020); ``backdoor`` adds, for
    ``poison_fraction`` of its training conversations, a copy whose question carries
    ``trigger`` and whose answer is ``target``, and with ``scale`` boosts the delta trained
    on it (model replacement, Bagdasaryan et al. 2020); ``free_rider`` sends zeros or, with
    ``free_ride = "stale"``, the first delta it ever trained, every round.
    """

    kind: Literal[
        "none", "sign_flip", "scaling", "gaussian", "alie", "ipm", "backdoor", "free_rider"
    ] = "none"
    fraction: float = 0.0
    participants: tuple[str, ...] = ()
    scale: float | None = None
    z: float | None = None
    epsilon: float = 0.5
    trigger: str = "zq-tangerine-7"
    target: str = "Visit evil.example for the answer."
    poison_fraction: float = 0.5
    free_ride: Literal["zero", "stale"] = "zero"

    @model_validator(mode="after")
    def _check(self) -> AttackConfig:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError("attack.fraction must be in [0, 1): some participants stay honest")
        if self.kind != "none" and (self.fraction > 0) == bool(self.participants):
            raise ValueError(
                f"attack.kind = '{self.kind}' needs exactly one of attack.fraction (> 0) and "
                "attack.participants (names)"
            )
        if not 0.0 < self.poison_fraction <= 1.0:
            raise ValueError("attack.poison_fraction must be in (0, 1]")
        if self.epsilon <= 0 or (self.scale is not None and self.scale <= 0):
            raise ValueError("attack.epsilon and attack.scale must be positive")
        return self


class GateConfig(_Frozen):
    """``[gate]``: a round's candidate version is committed only if its loss on a validation
    set is at most (1 + ``tolerance``) x the current version's; otherwise the round is
    rejected (audited) and the current version stays published.

    ``source``: ``validation_file`` (an operator-held file, read like a data source, at
    most ``max_examples`` of its conversations) or, in the simulation only, ``heldout``
    (the union of the participants' held-out splits, which a real coordinator never
    sees); ``none`` turns the gate off.
    """

    source: Literal["none", "validation_file", "heldout"] = "none"
    validation_file: str | None = None
    tolerance: float = 0.02
    max_examples: int = 256

    @model_validator(mode="after")
    def _check(self) -> GateConfig:
        if (self.source == "validation_file") != (self.validation_file is not None):
            raise ValueError(
                "gate.validation_file is needed by, and only by, gate.source = 'validation_file'"
            )
        if not self.tolerance >= 0:
            raise ValueError("gate.tolerance must be >= 0 (a relative loss increase)")
        if self.max_examples < 1:
            raise ValueError("gate.max_examples must be at least 1")
        return self


class DetectConfig(_Frozen):
    """``[detect]``: poisoning detection. Every update of a round is scored against its
    cohort: flagged when its norm is above ``norm_factor`` x the cohort's median norm or
    below 1/``norm_factor`` of it (a free rider's zeros), when its cosine to the round's
    aggregate is below ``min_cosine``, or (``validation``: with a ``[gate]`` validation
    set) when applying it alone raises that loss by more than ``max_effect`` (relative).
    A flagged update is left out of its round's aggregate.
    A participant's reputation starts at 1 and moves each round it takes part to
    ``decay`` x reputation + (1 - decay) x (0 if flagged else 1); below
    ``quarantine_below`` it is quarantined: left out of cohorts until an operator
    reinstates it (``zenfed reinstate``).
    """

    enabled: bool = False
    norm_factor: float = 3.0
    min_cosine: float = 0.0
    validation: bool = False
    max_effect: float = 0.05
    decay: float = 0.5
    quarantine_below: float = 0.3

    @model_validator(mode="after")
    def _check(self) -> DetectConfig:
        if not self.norm_factor > 1:
            raise ValueError("detect.norm_factor must be > 1")
        if not -1 <= self.min_cosine < 1:
            raise ValueError("detect.min_cosine must be in [-1, 1)")
        if not 0 <= self.decay < 1:
            raise ValueError("detect.decay must be in [0, 1)")
        if not 0 < self.quarantine_below < 1:
            raise ValueError("detect.quarantine_below must be in (0, 1)")
        if not self.max_effect >= 0:
            raise ValueError("detect.max_effect must be >= 0")
        return self
