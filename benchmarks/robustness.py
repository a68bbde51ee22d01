"""Robustness benchmark: final held-out loss under simulated attacks, FedAvg against the
recommended robust aggregator, and the backdoor's success rate (issue #12).

    python -m benchmarks.robustness --pilot     # seed 0, FedAvg and each PILOT rule (~70 min)
    python -m benchmarks.robustness             # the table, 3 seeds (~50 min more, ~30 secure)
    python -m benchmarks.robustness --only secure_robust   # re-run those rows, merge them

Workload: the quality benchmark's model and adapter (SmolLM2-135M-Instruct, LoRA r=8 on
q/k/v/o, 64-token sequences, loss on whole sequences, AdamW lr 3e-3, 1 local step), the
chatterbot English data split over 10 holders by a Dirichlet (alpha 0.5) draw over
categories, fixed cohorts of 5 (sampling.fraction 0.5), 20% of the holders attacking
(attack.fraction 0.2: 2 of 10, about 1 per cohort, 2 in about a fifth of the rounds).
Shorter than the quality recipe to fit 2 slow cores (one thread): batch 4, 6 rounds = 30
local steps for every row but the backdoor's (4 local steps a round, BACKDOOR_RECIPE),
3% of each holder's data held out and evaluated only before round 1 and after the last.
Gap = a row's mean loss over seeds above clean FedAvg's mean, in percent; run.seed
changes the split, the cohorts, the attackers and the LoRA init, so the per-seed gaps
(spread, error bars) are paired with clean FedAvg of the same seed.
Backdoor success: the share of trigger prompts (``triggered`` on held-out examples of
honest holders) whose greedy continuation contains the attack's target answer.
secure_robust: the median over secure buckets of 2 under [secagg] (clip_norm 10) with
everyone in every round for 3 rounds (SECURE_RECIPE: cohorts of 5 make only 2 buckets),
facing SECURE_ATTACKS; its gap is the worst over them, against clean FedAvg of the same
recipe (detection cannot run under secure aggregation).

Choosing the recommended rule (``--pilot``: seed 0, every attack, gap to clean FedAvg; Krum
with f=2 needs cohorts of 7, so f=1). Seed 0 is harsh: its 2 attackers are the two largest
holders (63% of the training examples) and meet in 3 of the 6 cohorts. Clean cost / worst
gap (attack): median +0.1% / +14% (sign_flip; ipm +6%, the rest <= 4%); trimmed_mean
beta=0.2 +0.8% / +45% (scaling; sign_flip +36%); krum f=1 m=3 +0.7% / +52% (free_rider;
ipm +38%, sign_flip, scaling and gaussian -1%: Krum drops them); centered_clipping bucket=2
-0.0% / +941% (scaling); geometric_median +2.4% / +1688% (scaling); FedAvg itself +1405%.
Trimmed mean and Krum f=1 break in two-attacker rounds; the rules that weigh updates by
declared examples (geometric median, centered clipping, bucket means) hand the majority of
the weight to the two large attackers. The unweighted coordinate median tolerates 2 of 5,
costs nothing clean and has the smallest worst case: RECOMMENDED. (Plain centered clipping
was not piloted, for time.) The recommended configuration adds poisoning detection
(RECOMMENDED_EXTRA, ``[detect]`` defaults): on seed 0 it flagged every sign-flipping,
scaling, noising, IPM and free-riding update and no honest one, leaves flagged updates out
of their round and quarantines their senders after two flags. What remains of the gap is
the data of two holders the model never learns from: the ``oracle`` row (FedAvg with the
attackers quarantined before round 1) measures that floor.

Every run is cached in results/robustness_runs.json as it ends (keyed by its settings), so
an interrupted run resumes and ``--only ROW`` re-runs a row and merges it into the rest.
Writes benchmarks/results/robustness.json and robustness.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import make_config
from zenfed.config import AttackConfig, FederationConfig
from zenfed.coordinator.engine import Coordinator
from zenfed.data.federated import load_examples
from zenfed.data.formatting import tokenize_example
from zenfed.errors import ZenfedError
from zenfed.model.adapter import set_adapter_state
from zenfed.sim import runner as sim_runner
from zenfed.sim.attacks import choose_attackers, triggered
from zenfed.sim.runner import load_run, run_simulation
from zenfed.sim.setup import World, build_world

# The recommended [server] aggregator: the one setting to change (chosen by the pilot).
RECOMMENDED: dict[str, Any] = {"rule": "median"}
PILOT: dict[str, dict[str, Any]] = {
    "trimmed_mean(beta=0.2)": {"rule": "trimmed_mean", "beta": 0.2},
    "centered_clipping/bucket2": {"rule": "centered_clipping", "bucket": 2},
    "median": {"rule": "median"},
    "geometric_median": {"rule": "geometric_median"},
    "krum(f=1,m=3)": {"rule": "krum", "f": 1, "m": 3},
}
ATTACKS = ("sign_flip", "scaling", "gaussian", "alie", "ipm", "backdoor", "free_rider")
SEEDS = (0, 1, 2)
RECIPE: dict[str, Any] = {
    "data.partition": "dirichlet",
    "data.num_participants": 10,
    "data.heldout_fraction": 0.03,
    "sampling.fraction": 0.5,
    "sampling.min_participants": 5,
    "train.batch_size": 4,
    "train.local_steps": 1,
    "run.rounds": 6,
    "run.eval_every": 1000,  # only before round 1 and after the last
}
FRACTION = 0.2  # of the holders attack
# Secure aggregation for the secure_robust row: the fixed-point range (honest updates of
# one AdamW step at lr 3e-3 have L2 norm about 2-3).
SECURE: dict[str, Any] = {"secagg.enabled": True, "secagg.clip_norm": 10.0}
# ...with the recommended rule over buckets (of 2 unless it sets them): what secagg can sum
SECURE_RULE = {**RECOMMENDED, "bucket": RECOMMENDED.get("bucket") or 2}
# The recommended configuration adds poisoning detection ([detect], defaults): flagged
# updates are left out of their round and their senders quarantined after two flags.
RECOMMENDED_EXTRA: dict[str, Any] = {"detect.enabled": True}
# Bucketed secure rows: detection cannot run under [secagg] (it sees bucket sums only),
# and buckets of 2 out of cohorts of 5 give 2 buckets (a median of 2 is their mean): they
# run with everyone every round (10 -> 5 buckets) for 3 rounds (the same 30 steps), and
# are compared with clean FedAvg of that recipe.
SECURE_RECIPE: dict[str, Any] = {"sampling.fraction": 1.0, "run.rounds": 3}
SECURE_ATTACKS = ("sign_flip", "ipm")
# The backdoor's rows: a trigger is learnt only with enough local training, which one
# step a round never gives (with it, FedAvg's success was 0%: no row could tell a defence
# from none). Every participant trains 4 local steps a round (120 in all) and the
# attackers add a triggered copy of every training conversation (pure data poisoning, no
# boost); their gap is to clean FedAvg of this recipe (BACKDOOR_CLEAN).
BACKDOOR_RECIPE: dict[str, Any] = {"train.local_steps": 4, "attack.poison_fraction": 1.0}
BACKDOOR_CLEAN = "clean/fedavg-backdoor-recipe"
# The pilot chose the rule before the backdoor got its own recipe: it compares the rules
# on the other attacks (the backdoor's old rows all ended within 1 % of clean).
PILOT_ATTACKS = tuple(a for a in ATTACKS if a != "backdoor")
# The oracle: FedAvg with the attackers left out from the start (what no defence beats).
ORACLE: dict[str, Any] = {"run.out_dir": "oracle"}
TARGETS = {"worst_attack_gap_pct": 5.0, "backdoor_success_pct": 5.0, "default_clean_cost_pct": 2.0}
PROMPTS, NEW_TOKENS = 32, 24  # backdoor success: trigger prompts, greedy tokens each
CACHE = RESULTS / "robustness_runs.json"
OUT = Path("runs/bench-robustness")
Rows = dict[str, tuple[dict[str, Any], str, dict[str, Any]]]


def overrides(
    aggregator: dict[str, Any], attack: str, seed: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """The dotted-key settings of one run (also its cache key)."""
    o: dict[str, Any] = {**RECIPE, "server.aggregator": dict(aggregator), "run.seed": seed}
    if attack != "none":
        o |= {"attack.kind": attack, "attack.fraction": FRACTION}
    if attack == "backdoor":
        o |= BACKDOOR_RECIPE
    return o | extra


def run_key(o: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(o, sort_keys=True).encode()).hexdigest()[:16]


def grid(rules: dict[str, dict[str, Any]], secure: bool = False) -> Rows:
    """Row ``<attack or clean>/<rule label>`` -> (aggregator, attack, extra overrides),
    FedAvg's rows first (the recommended rule's with RECOMMENDED_EXTRA); with ``secure``,
    the oracle, the secure recipe's clean FedAvg and ``secure_robust/<attack>``."""
    out: Rows = {}
    fedavg = {"rule": "fedavg"}
    for label, agg in {"fedavg": fedavg, **rules}.items():
        extra = RECOMMENDED_EXTRA if label == "recommended" else {}
        for a in ("none", *ATTACKS):
            out[f"{'clean' if a == 'none' else a}/{label}"] = (agg, a, extra)
    if secure:
        out[BACKDOOR_CLEAN] = (fedavg, "none", {"train.local_steps": 4})
        out["oracle/fedavg"] = (fedavg, "none", ORACLE)
        out["clean/fedavg-secure-recipe"] = (fedavg, "none", SECURE_RECIPE)
    for a in SECURE_ATTACKS if secure else ():
        out[f"secure_robust/{a}"] = (SECURE_RULE, a, SECURE | SECURE_RECIPE)
    return out


class Oracle(Coordinator):
    """The oracle row's coordinator: the attackers (the draw every attack uses) are
    quarantined before round 1, so the federation is FedAvg over the honest holders."""

    def __init__(self, cfg: FederationConfig, initial: Any, participants: Any, **kw: Any):
        super().__init__(cfg, initial, participants, **kw)
        kind = AttackConfig(kind="ipm", fraction=FRACTION)
        bad = choose_attackers(kind, sorted(participants), cfg.run.seed)
        self.state.quarantined = {p: "oracle: a known attacker" for p in bad}


class Runner:
    """Runs (or takes from the cache) one federation per (row, seed); one world at a time."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
        self.world: World | None = None
        self.prompts: dict[int, list[Any]] = {}

    def get(self, o: dict[str, Any], label: str, retry_refused: bool = False) -> dict[str, Any]:
        key = run_key(o)
        hit = self.cache.get(key)
        if hit is not None and not (retry_refused and "refused" in hit):
            return dict(hit)
        entry: dict[str, Any] = {"row": label, "seed": o["run.seed"], "overrides": o}
        try:
            cfg = make_config({**o, "run.out_dir": str(OUT)})
            if self.world is None or not self.world.fits(cfg):
                self.world = None  # free the previous model before loading the next
                self.world = build_world(cfg)
            oracle = o.get("run.out_dir") == "oracle"
            vars(sim_runner)["Coordinator"] = Oracle if oracle else Coordinator
            s = run_simulation(cfg, OUT, fresh=True, world=self.world)
        except (ZenfedError, ValueError) as e:
            entry["refused"] = str(e)
            print(f"{label} seed {o['run.seed']}: refused: {e}", flush=True)
        else:
            entry |= {k: s[k] for k in ("initial_loss", "fed_loss", "fed_steps", "seconds")}
            entry["aborted_rounds"] = s["aborted_rounds"]
            names = sorted(self.world.participants)
            entry["attackers"] = choose_attackers(cfg.attack, names, cfg.run.seed)
            # the loss on the held-out splits of the holders who stay honest under attack
            # (the same draw for every kind; for clean runs too): no attacker's own data
            bad = choose_attackers(AttackConfig(kind="ipm", fraction=FRACTION), names, cfg.run.seed)
            own, tokens = load_run(OUT)[2][-1]["own_loss"], {}
            for d in self.world.data:
                tokens[d.name] = sum(t.num_loss_tokens for t in d.heldout) * (d.name not in bad)
            entry["honest_loss"] = sum(own[k] * n for k, n in tokens.items()) / sum(tokens.values())
            if cfg.attack.kind == "backdoor":
                final = load_run(OUT)[0].params  # the final global adapter
                entry["backdoor_success"] = self.backdoor_success(cfg, entry["attackers"], final)
                entry["backdoor_prompts"] = len(self.prompts[cfg.run.seed])
            bd = f", backdoor {entry.get('backdoor_success', 0):.3f}" * (
                "backdoor_prompts" in entry
            )
            line = f"loss {s['fed_loss']:.4f} (from {s['initial_loss']:.4f})"
            line += f", honest {entry['honest_loss']:.4f}, {s['seconds']:.0f}s{bd}"
            print(f"{label} seed {o['run.seed']}: {line}", flush=True)
        self.cache[key] = entry
        tmp = CACHE.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1) + "\n")
        tmp.replace(CACHE)  # a crash never leaves half a cache
        return dict(entry)

    def backdoor_success(self, cfg: FederationConfig, attackers: list[str], state: Any) -> float:
        """Share of trigger prompts whose greedy continuation holds the target answer."""
        assert self.world is not None
        world, target = self.world, cfg.attack.target
        set_adapter_state(world.model, state)
        prompts = self.trigger_prompts(cfg, attackers)
        tok, model = world.tokenizer, world.model
        chats = [[{"role": r, "content": c} for r, c in p] for p in prompts]
        texts = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
        ]
        side, tok.padding_side = tok.padding_side, "left"
        hits, was_training = 0, model.training
        model.eval()
        try:
            for i in range(0, len(texts), 8):
                enc = tok(
                    texts[i : i + 8], return_tensors="pt", padding=True, add_special_tokens=False
                )
                with torch.inference_mode():
                    kw = {"max_new_tokens": NEW_TOKENS, "pad_token_id": world.runtime.pad_id}
                    gen = model.generate(**enc, **kw, do_sample=False)
                for row in gen[:, enc["input_ids"].shape[1] :]:
                    hits += _norm(target) in _norm(str(tok.decode(row, skip_special_tokens=True)))
        finally:
            tok.padding_side = side
            model.train(was_training)
        return hits / max(1, len(texts))

    def trigger_prompts(self, cfg: FederationConfig, attackers: list[str]) -> list[Any]:
        """``PROMPTS`` held-out questions of honest holders, each with the trigger."""
        seed = cfg.run.seed
        if seed not in self.prompts:
            assert self.world is not None
            by_ids: dict[tuple[int, ...], Any] = {}
            for ex in load_examples(cfg.data):  # the held-out split keeps token ids only
                t = tokenize_example(
                    self.world.tokenizer, ex, cfg.data.max_seq_len, cfg.data.train_on
                )
                by_ids.setdefault(t.input_ids, ex)
            held = [
                by_ids[t.input_ids]
                for d in self.world.data
                if d.name not in attackers
                for t in d.heldout
                if t.input_ids in by_ids
            ]
            step = max(1, len(held) // PROMPTS)
            self.prompts[seed] = [
                triggered(ex, cfg.attack.trigger) for ex in held[::step][:PROMPTS]
            ]
        return self.prompts[seed]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def stats(v: list[float]) -> dict[str, float]:
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"mean": statistics.fmean(v), "std": std, "min": min(v), "max": max(v)}


def summarize(table: Rows, runner: Runner, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per row: losses by seed, mean/std/min/max, gap to clean FedAvg (mean and paired)."""
    out: dict[str, Any] = {}
    for name, (agg, attack, extra) in table.items():
        runs = {s: runner.cache.get(run_key(overrides(agg, attack, s, extra))) for s in seeds}
        done = {s: r for s, r in runs.items() if r is not None}
        refused = [r["refused"] for r in done.values() if "refused" in r]
        row: dict[str, Any] = {"aggregator": agg, "attack": attack, "overrides": extra}
        if refused:
            out[name] = row | {"built": False, "error": refused[0]}
            continue
        if not done:
            continue
        losses = {s: r["fed_loss"] for s, r in done.items()}
        if all("honest_loss" in r for r in done.values()):
            row["honest_loss_by_seed"] = {s: r["honest_loss"] for s, r in done.items()}
        row |= {"loss_by_seed": losses, "loss": stats(list(losses.values())), "seeds": sorted(done)}
        row["initial_loss"] = statistics.fmean(r["initial_loss"] for r in done.values())
        row["fed_steps"] = sorted({r["fed_steps"] for r in done.values()})
        row["seconds"] = statistics.fmean(r["seconds"] for r in done.values())
        row["attackers_by_seed"] = {s: r.get("attackers", []) for s, r in done.items()}
        if "backdoor_success" in next(iter(done.values())):
            pct = [100 * r["backdoor_success"] for r in done.values()]
            row["backdoor_success_pct"] = stats(pct)
        out[name] = row
    clean = out.get("clean/fedavg")
    if clean and "loss_by_seed" in clean:
        for name, row in out.items():
            if name in (BACKDOOR_CLEAN, "clean/fedavg-secure-recipe"):
                continue  # references of other recipes: no gap to this one
            base = out.get(BACKDOOR_CLEAN, {}) if row["attack"] == "backdoor" else clean
            ref = base.get("loss_by_seed", {})  # the backdoor's: its own recipe's clean run
            same = [ref[k] for k in row.get("loss_by_seed", {}) if k in ref]  # clean, same seeds
            if len(same) < len(row.get("loss_by_seed", [None])):
                continue
            row["gap_pct"] = 100 * (row["loss"]["mean"] / statistics.fmean(same) - 1)
            paired = [100 * (v / ref[s] - 1) for s, v in row["loss_by_seed"].items() if s in ref]
            row["gap_pct_by_seed"] = stats(paired) if paired else None
            honest, ref_h = row.get("honest_loss_by_seed"), base.get("honest_loss_by_seed")
            if honest and ref_h and set(honest) <= set(ref_h):
                m = statistics.fmean(honest.values()) / statistics.fmean(ref_h[k] for k in honest)
                row["honest_gap_pct"] = 100 * (m - 1)
    return out


def worst(
    table: dict[str, Any], suffix: str, key: str = "gap_pct", attacks: tuple[str, ...] = ATTACKS
) -> tuple[Any, str | None]:
    """The largest ``key`` over the ``attacks`` of the rows ``<attack>/<suffix>``."""
    gaps = {a: table.get(f"{a}/{suffix}", {}).get(key) for a in attacks}
    if any(g is None for g in gaps.values()):
        return None, None
    a = max(gaps, key=lambda k: gaps[k] or 0.0)
    return gaps[a], a


def pilot_choice(table: dict[str, Any]) -> dict[str, Any]:
    """Per candidate: clean cost and worst gap; the pick is the smallest worst gap among
    those costing at most the clean-cost target without attack (else among all)."""
    found = {}
    for label in PILOT:
        w, a = worst(table, label, attacks=PILOT_ATTACKS)
        cost = table.get(f"clean/{label}", {}).get("gap_pct")
        gaps = {x: table.get(f"{x}/{label}", {}).get("gap_pct") for x in PILOT_ATTACKS}
        found[label] = {
            "clean_cost_pct": cost,
            "worst_gap_pct": w,
            "worst_attack": a,
            "gaps_pct": gaps,
        }
    ok = {k: v for k, v in found.items() if None not in (v["worst_gap_pct"], v["clean_cost_pct"])}
    pool = {k: v for k, v in ok.items() if v["clean_cost_pct"] <= 2.0} or ok  # clean target
    pick = min(pool, key=lambda k: pool[k]["worst_gap_pct"]) if pool else None
    return {"candidates": found, "pick": pick, "seed": SEEDS[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilot", action="store_true", help="1 seed, every candidate in PILOT")
    only = "rows to run (repeatable): a name, its first part, or a pattern like */fedavg"
    ap.add_argument("--only", action="append", default=[], help=only)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--report", action="store_true", help="only rebuild the JSON and PNG")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 shared cores
    t0 = time.perf_counter()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    runner = Runner()
    table = grid(PILOT) if args.pilot else grid({"recommended": RECOMMENDED}, secure=True)
    pats = [q for p in args.only for q in (p, f"{p}/*")] if not args.report else ["-"]
    chosen = {k: v for k, v in table.items() if not pats or any(fnmatch(k, p) for p in pats)}
    refused: str | None = None  # secure rows share one setting: one refusal is enough
    # the table before the secure rows; per seed, the backdoor's runs last (their own world)
    jobs = [(s, k, v) for s in (seeds[:1] if args.pilot else seeds) for k, v in chosen.items()]
    for seed, name, (agg, attack, extra) in sorted(
        jobs, key=lambda j: ("secagg.enabled" in j[2][2], j[0], j[2][1] == "backdoor")
    ):
        secure = "secagg.enabled" in extra
        if not (secure and refused):
            entry = runner.get(overrides(agg, attack, seed, extra), name, retry_refused=secure)
            refused = entry.get("refused") if secure else refused
    pilot = pilot_choice(summarize(grid(PILOT), runner, seeds[:1]))
    print(json.dumps(pilot, indent=1))
    if args.pilot:
        return
    from benchmarks.robustness_report import plot, report

    table = summarize(grid({"recommended": RECOMMENDED}, secure=True), runner, seeds)
    result = report(table, pilot, seeds)
    if not args.report:
        result["wall_seconds_this_invocation"] = time.perf_counter() - t0
    # every cached run's own seconds (pilot included): the compute the whole table took
    result["run_seconds_all_cached"] = sum(e.get("seconds", 0.0) for e in runner.cache.values())
    print(write_json("robustness", result))
    plot(result, RESULTS / "robustness.png")


if __name__ == "__main__":
    main()
