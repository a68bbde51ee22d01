"""The privacy policy of a federation: what clipping and differential privacy do to a round,
as one object the round engine calls at fixed points and never looks inside.

    policy = PrivacyPolicy(cfg)               # z calibrated to the target epsilon here
    policy.check_budget(ledger, server_round)  # before a round: PrivacyBudgetExceeded
    tasks = policy.decorate(tasks, examples, ledger, expected_cohort, secure)
    tensors, weight, below = policy.prepare(task, tensors, num_examples)   # plaintext upload
    agg, metrics, ledger = policy.release(agg, ledger, expected_cohort, secure)

Like Flower's DP strategy wrappers it decorates what goes out (the clip bound, each
participant's share of distributed noise, its weight under secure aggregation) and what
comes back (clips plaintext updates itself, noises the sum, replaces the denominator by
the expected cohort q * N, accounts the release, adapts the clip bound). Without a clip
bound it changes nothing. The mathematics (DP-FedAvg, adaptive clipping, the accountant)
are in ``zenfed.privacy.dp``; this only composes them.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import torch

from zenfed.aggregate.accumulate import Aggregate
from zenfed.aggregate.shares import cap_shares
from zenfed.config import EpochsSampling, FederationConfig
from zenfed.noise import gaussian
from zenfed.privacy import dp, tree
from zenfed.protocol.messages import Task
from zenfed.tensors import Tensors


class PrivacyPolicy:
    """Clipping and participant-level DP for one federation config."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.pc, self.sc = cfg.privacy, cfg.secagg
        self.weight_cap = cfg.weight_cap  # a secure round's weights are capped at open
        pc = self.pc
        self.rounds = cfg.run.rounds
        self.over_regions = cfg.regions.enabled  # this root's participants are regions
        self.noise_at_regions = cfg.regions.noise == "region"
        # DP-FTRL: one tree per pass of sampling.method = "epochs"
        sampling = cfg.sampling
        self.pass_rounds = sampling.pass_rounds if isinstance(sampling, EpochsSampling) else 1
        self.tree = pc.mechanism == "tree"
        # The rate the accountant composes: the matcher's (1, no amplification, for the
        # passes DP-FTRL needs), 1 for buffered aggregation (nobody is sampled: whoever is
        # free trains), and at a root over regions each region's rate (a region's own
        # config has it as sampling.fraction, ``regions.regional_config``).
        if cfg.buffered.enabled:
            self.sampling_rate = 1.0
        elif cfg.regions.enabled:
            self.sampling_rate = cfg.regions.fraction
        else:
            self.sampling_rate = sampling.sampling_rate
        # DP: the noise multiplier, calibrated to the target epsilon over the whole run.
        self.noise_multiplier: float | None = pc.noise_multiplier
        if pc.enabled and self.noise_multiplier is None:
            assert pc.target_epsilon is not None
            if self.tree:
                trees = tree.passes(self.rounds, self.pass_rounds)
                self.noise_multiplier = tree.calibrate(pc.target_epsilon, pc.target_delta, trees)
            else:
                self.noise_multiplier = dp.calibrate_noise(
                    pc.target_epsilon,
                    pc.target_delta,
                    self.sampling_rate,
                    self.rounds,
                    pc.accountant,
                )

    @property
    def accounted(self) -> bool:
        """Whether releases are noised and accounted (epsilon is spent)."""
        return self.noise_multiplier is not None

    def initial_ledger(self) -> dp.PrivacyLedger:
        """The ledger of a new federation: nothing spent, the configured clip bound."""
        seed = secrets.randbits(62) if self.tree else 0  # the trees' noise: kept secret
        return dp.PrivacyLedger([], self.pc.clip_norm or self.sc.clip_norm, seed=seed)

    def epsilon(self, ledger: dp.PrivacyLedger) -> float:
        """Epsilon spent by ``ledger`` at the federation's delta (0 without DP)."""
        return ledger.spent(self.pc.target_delta, self.pc.accountant)

    def check_budget(self, ledger: dp.PrivacyLedger, server_round: int) -> None:
        """PrivacyBudgetExceeded if releasing ``server_round`` (0-based) would spend more
        than the target."""
        z, pc = self.noise_multiplier, self.pc
        if z is None or pc.target_epsilon is None:
            return
        eps = self.epsilon(self.released(ledger, server_round))
        if eps > pc.target_epsilon * (1 + 1e-9):
            raise dp.PrivacyBudgetExceeded(
                f"round {server_round + 1} would spend epsilon {eps:.3f} > the budget "
                f"{pc.target_epsilon:g} (delta {pc.target_delta:g}); training stops here",
                fix="release the current version, or start a new federation with a new budget",
            )

    def released(self, ledger: dp.PrivacyLedger, server_round: int) -> dp.PrivacyLedger:
        """``ledger`` with the release of ``server_round`` (0-based) added: one
        (q, z) entry, and under DP-FTRL the round's leaf of its pass's tree."""
        z = self.noise_multiplier
        if z is None:
            return ledger
        leaves = [*ledger.tree, self.leaf(server_round)] if self.tree else ledger.tree
        return replace(ledger, rounds=[*ledger.rounds, (self.sampling_rate, z)], tree=leaves)

    def ledger_after_run(self) -> dp.PrivacyLedger:
        """The ledger once every one of ``run.rounds`` rounds is released (what a plan
        spends)."""
        ledger = self.initial_ledger()
        for r in range(self.rounds):
            ledger = self.released(ledger, r)
        return ledger

    def leaf(self, server_round: int) -> tuple[int, int]:
        """DP-FTRL: (pass, leaf) of ``server_round`` (0-based; leaves count from 1)."""
        p, i = divmod(server_round, self.pass_rounds)
        return p, i + 1

    def noise(self, ledger: dp.PrivacyLedger, expected_cohort: float) -> tuple[float, float]:
        """(stddev of the update sum's noise, stddev of the clip count's noise)."""
        z, clip = self.noise_multiplier, ledger.clip_norm
        if z is None or clip is None:
            return 0.0, 0.0
        z_update = dp.update_noise_multiplier(self.pc, z, expected_cohort)
        count = dp.count_stddev(self.pc, expected_cohort, z) if self.pc.adaptive_clipping else 0.0
        return z_update * clip, count

    def decorate(
        self,
        tasks: list[Task],
        examples: dict[str, int],
        ledger: dp.PrivacyLedger,
        expected_cohort: float,
        secure: bool,
    ) -> list[Task]:
        """The clip bound, noise shares and (under secure aggregation) weights of tasks."""
        clip = ledger.clip_norm
        if clip is None:
            return tasks
        update_std, count_std = self.noise(ledger, expected_cohort)
        distributed = secure and self.pc.noise == "distributed"
        share = max(1, self.sc.min_survivors) ** 0.5  # survivors >= min: noise >= target
        # Under secure aggregation the weights are applied before masking: capped over
        # the cohort as sampled (a dropout can raise the others' shares).
        capped = cap_shares(
            {t.participant: examples[t.participant] for t in tasks}, self.weight_cap
        )
        top = max(capped.values())
        out = []
        for t in tasks:
            weight = 1.0 if self.accounted else capped[t.participant] / top
            out.append(
                replace(
                    t,
                    clip_norm=clip,
                    noise_std=update_std / share if distributed else 0.0,
                    report_clip=self.pc.adaptive_clipping,
                    count_noise_std=count_std / share if distributed else 0.0,
                    weight=weight if secure else 1.0,
                )
            )
        return out

    def prepare(
        self, task: Task, tensors: Tensors, num_examples: int
    ) -> tuple[Tensors, float, float]:
        """A plaintext update as it enters the sum: (tensors, weight, centred clip bit).

        The coordinator sees plaintext updates, so it clips them itself (it does not
        trust the participant to have); under DP every update weighs 1. A root over
        regions gets each region's mean of ``num_examples`` clipped updates, which weighs
        ``num_examples`` and, as a mean of updates within the bound, is within it too
        (clipped again unless the region noised it: clipping noise would bias it)."""
        if task.clip_norm is None:
            return tensors, float(num_examples), 0.0
        if self.over_regions:
            if not (self.accounted and self.noise_at_regions):
                tensors, _ = dp.clip_l2(tensors, task.clip_norm)
            return tensors, float(num_examples), 0.0
        clipped, norm = dp.clip_l2(tensors, task.clip_norm)
        below = float(norm <= task.clip_norm) - 0.5  # centred, as the accounting assumes
        return clipped, 1.0 if self.accounted else float(num_examples), below

    def release(
        self,
        agg: Aggregate,
        ledger: dp.PrivacyLedger,
        expected_cohort: float,
        secure: bool,
        server_round: int = 0,
    ) -> tuple[Aggregate, dict[str, float], dp.PrivacyLedger]:
        """The aggregate of ``server_round`` as released (noised; the fixed denominator
        q * N under DP), its privacy metrics, and the ledger after the release."""
        if ledger.clip_norm is None:
            return agg, {}, ledger
        if self.tree and self.accounted:
            return self._release_leaf(agg, ledger, expected_cohort, server_round)
        update_std, count_std = self.noise(ledger, expected_cohort)
        metrics: dict[str, float] = {"clip_norm": float(ledger.clip_norm)}
        central = self.accounted and (self.pc.noise == "central" or not secure)
        if self.over_regions and self.noise_at_regions:
            central = False  # each region noised its own sum (``forwarded``)
        below, count = agg.below, float(agg.count)
        if central:  # where the clip bound holds: on the sum as it travelled
            agg = agg.with_total(_noised(agg.total, update_std, self.pc.secure_noise))
        if self.accounted:
            if central:
                below += float(gaussian((), count_std, secure=self.pc.secure_noise))
            agg = agg.with_total(agg.total, weight=expected_cohort)
            count = expected_cohort  # the fixed denominator q * N
            metrics["noise_std"] = update_std
        if self.pc.adaptive_clipping:
            metrics["below_clip_fraction"] = below / max(count, 1e-12) + 0.5
        new = self._ledger_after(ledger, metrics, server_round)
        if self.accounted:
            metrics["epsilon"] = self.epsilon(new)
            # the ledger entry itself, so a reader of the versions can rebuild the ledger
            metrics["noise_multiplier"] = float(self.noise_multiplier or 0.0)
            metrics["sampling_rate"] = self.sampling_rate
        if new.clip_norm is not None:
            metrics["next_clip_norm"] = new.clip_norm
        return agg, metrics, new

    def _release_leaf(
        self, agg: Aggregate, ledger: dp.PrivacyLedger, expected_cohort: float, server_round: int
    ) -> tuple[Aggregate, dict[str, float], dp.PrivacyLedger]:
        """DP-FTRL: the round's sum gets its pass tree's noise increment since the pass's
        last release, so the released sums add up to noisy prefix sums."""
        assert ledger.clip_norm is not None and self.noise_multiplier is not None
        p, leaf = self.leaf(server_round)
        before = max((t for q, t in ledger.tree if q == p), default=0)
        std = self.noise_multiplier * ledger.clip_norm
        shapes = {k: tuple(v.shape) for k, v in agg.total.items()}
        noise = tree.TreeNoise(shapes, std, tree.pass_seed(ledger.seed, p))
        step = noise.increment(leaf, since=before)
        total = {k: v.to(torch.float64) + step[k] for k, v in agg.total.items()}
        new = self.released(ledger, server_round)
        metrics = {
            "clip_norm": float(ledger.clip_norm),
            "noise_std": std,
            "epsilon": self.epsilon(new),
            "noise_multiplier": float(self.noise_multiplier),
            "sampling_rate": 1.0,
            "tree_pass": float(p),
            "tree_leaf": float(leaf),
        }
        return agg.with_total(total, weight=expected_cohort), metrics, new

    def forwarded(self, agg: Aggregate, ledger: dp.PrivacyLedger) -> Aggregate:
        """A regional coordinator's aggregate as it leaves for the root: under DP with
        ``regions.noise = "region"``, its sum of clipped updates noised (stddev z * C) here,
        so the root never sees it bare; otherwise unchanged (the root noises the total).
        The release is accounted once, at the root."""
        if not (self.accounted and self.noise_at_regions) or ledger.clip_norm is None:
            return agg
        z = self.noise_multiplier or 0.0
        return agg.with_total(_noised(agg.total, z * ledger.clip_norm, self.pc.secure_noise))

    def _ledger_after(
        self, old: dp.PrivacyLedger, metrics: dict[str, float], server_round: int
    ) -> dp.PrivacyLedger:
        clip = old.clip_norm
        if clip is not None and "below_clip_fraction" in metrics:
            clip = dp.next_clip_norm(self.pc, clip, metrics["below_clip_fraction"])
        return replace(self.released(old, server_round), clip_norm=clip)


def _noised(total: Tensors, std: float, secure: bool) -> Tensors:
    """``total`` plus independent N(0, std^2) noise (float64; zenfed.noise)."""
    return {
        k: v.to(torch.float64) + torch.from_numpy(gaussian(tuple(v.shape), std, secure=secure))
        for k, v in total.items()
    }
