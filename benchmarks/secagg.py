"""Secure aggregation benchmark: what SecAgg+ costs each participant and the coordinator,
against plaintext aggregation of the same vectors, and what it adds to a real round.

    python -m benchmarks.secagg                     # the grid and the round overhead
    python -m benchmarks.secagg --skip-round        # the grid only (a few minutes)
    python -m benchmarks.secagg --publish           # into benchmarks/results/ (clean tree)

Grid (issue #5): n in {10, 50, 100} participants, d in {1e5, 1e6} values, 0 % and 10 %
dropout (after sharing keys, before uploading: the expensive case, whose pairwise masks
must be reconstructed). The real protocol classes run in one process; per-participant
times are measured on every participant and averaged (client_ms: key generation and
agreement, Shamir shares and their encryption, decrypting received shares, fixed-point
encoding, masking, answering the unmask stage); coordinator time covers collecting
(summing) the masked vectors, reconstructing secrets, removing masks and decoding.
Bytes up per participant count every stage's message: advertised keys and signature,
encrypted shares, the masked vector as safetensors, unmask shares. Plaintext: the same
float32 vector as safetensors, and the coordinator summing the decoded vectors.

Round overhead: the quality workload (built-in SmolLM2-135M-Instruct, 8 chatterbot
participants, cohorts of 4) for a few rounds with and without secure aggregation (dense
adapter delta, a clipping bound above every update's norm); median round wall-clock, and,
because rounds vary by a few percent on their own, also the time spent inside
secure-aggregation code (both sides, timed) as a share of the secure rounds' time.
Every grid point runs over seeds 0, 1 and 2 (vectors, dropouts and keys differ); the
round overhead is 3 interleaved pairs of runs (plaintext then secure, secure then
plaintext, plaintext then secure; run.seed 0, 1, 2). The headlines (``HEADLINES``) were
fixed before these runs: the issue's point (n = 100, d = 1e6, 10 % dropout) and the
secure code's share of a real round, each as a mean over the three seeds with its
spread. Writes through the harness (``benchmarks.harness``): the scratch folder, or
benchmarks/results/secagg.json and secagg.png with ``--publish``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from benchmarks import harness
from benchmarks.harness import Headline, Stats
from zenfed.privacy.secagg import SecAggClient, SecAggServer
from zenfed.privacy.secagg.protocol import decode_sum

NS = (10, 50, 100)
DS = (100_000, 1_000_000)
DROPOUTS = (0.0, 0.1)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def secure(n: int, d: int, dropout: float, seed: int = 0) -> dict[str, Any]:
    """One round of SecAgg+ with ``n`` participants of ``d`` values; times and bytes."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n)]
    sks = {p: Ed25519PrivateKey.generate() for p in ids}
    vks = {p: k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for p, k in sks.items()}
    x = {p: rng.uniform(-1, 1, d).astype(np.float32) for p in ids}
    drop = set(rng.choice(ids, round(dropout * n), replace=False).tolist())
    client_s = dict.fromkeys(ids, 0.0)
    up = dict.fromkeys(ids, 0)
    server_s = 0.0

    srv, t = _timed(lambda: SecAggServer(0, ids, vks, length=d, bound=1.0, seed=seed))
    server_s += t
    cl: dict[str, SecAggClient] = {}
    for p in ids:
        t0 = time.perf_counter()
        cl[p] = SecAggClient(p, srv.setup_for(p), sks[p].sign)
        adv = cl[p].advertise()
        client_s[p] += time.perf_counter() - t0
        up[p] += 32 * 3 + len(adv.signature) + len(p)
        _, t = _timed(srv.receive_keys, adv)
        server_s += t
    _, t = _timed(srv.close_stage)
    server_s += t
    for p in ids:
        keys = srv.keys_for(p)
        cts, t = _timed(cl[p].share_keys, keys, vks)
        client_s[p] += t
        up[p] += sum(len(c) + len(v) for v, c in cts.items())
        _, t = _timed(srv.receive_shares, p, cts)
        server_s += t
    srv.close_stage()
    for p in ids:
        t0 = time.perf_counter()
        cl[p].receive_shares(srv.inbox(p))
        if p in drop:
            client_s[p] += time.perf_counter() - t0
            continue
        payload = safetensors.numpy.save({"masked": cl[p].mask(x[p])})
        client_s[p] += time.perf_counter() - t0
        up[p] += len(payload)
        t0 = time.perf_counter()
        srv.receive_masked(p, safetensors.numpy.load(payload)["masked"])
        server_s += time.perf_counter() - t0
    srv.close_stage()
    req = srv.unmask_request()
    for p in req.survivors:
        shares, t = _timed(cl[p].unmask, req)
        client_s[p] += t
        up[p] += sum(len(s) + len(o) for o, s in shares.items())
        srv.receive_unmask(p, shares)
    total, t = _timed(lambda: decode_sum(srv.finish(), srv.scale))
    server_s += t
    want = sum(x[p].astype(np.float64) for p in req.survivors)
    err = float(np.max(np.abs(total - want)))
    alive = [p for p in ids if p not in drop]
    return {
        "client_ms": 1000 * float(np.mean([client_s[p] for p in alive])),
        "server_s": server_s,
        "bytes_up": float(np.mean([up[p] for p in alive])),
        "max_abs_error": err,
        "degree": len(srv.graph[ids[0]]),
        "threshold": max(srv.thresholds.values()),
        "survivors": len(req.survivors),
    }


def plaintext(n: int, d: int, dropout: float, seed: int = 0) -> dict[str, Any]:
    """The same vectors sent as float32 safetensors and summed by the coordinator."""
    rng = np.random.default_rng(seed)
    x = [rng.uniform(-1, 1, d).astype(np.float32) for _ in range(n - round(dropout * n))]
    t0 = time.perf_counter()
    payloads = [safetensors.numpy.save({"update": v}) for v in x]
    client_ms = 1000 * (time.perf_counter() - t0) / len(x)
    t0 = time.perf_counter()
    total = np.zeros(d, np.float64)
    for p in payloads:
        total += safetensors.numpy.load(p)["update"]
    return {
        "plaintext_client_ms": client_ms,
        "plaintext_server_s": time.perf_counter() - t0,
        "plaintext_bytes_up": float(len(payloads[0])),
    }


def _instrument() -> dict[str, float]:
    """Wrap every secure-aggregation step (both sides, the masking of the update and the
    coordinator's secure aggregation) in a timer; returns the running total."""
    import functools

    import zenfed.participant.agent as agent
    from zenfed.coordinator.secure import SecureRound

    spent = {"s": 0.0, "depth": 0}

    def timed(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            spent["depth"] += 1  # only the outermost timer counts: no time counted twice
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent["depth"] -= 1
                if not spent["depth"]:
                    spent["s"] += time.perf_counter() - t0

        return wrapper

    for name in ("secagg_advertise", "secagg_share", "secagg_receive", "secagg_unmask"):
        setattr(agent.Participant, name, timed(getattr(agent.Participant, name)))
    agent.masked_update = timed(agent.masked_update)
    for name in (
        "receive_keys",
        "keys_for",
        "receive_shares",
        "inbox",
        "check_masked",
        "receive_masked",
        "close_stage",
        "unmask_request",
        "receive_unmask",
    ):
        setattr(SecAggServer, name, timed(getattr(SecAggServer, name)))
    for name in ("check", "add", "result", "_decode"):  # the coordinator's masked sum
        setattr(SecureRound, name, timed(getattr(SecureRound, name)))
    return spent


KEY = ("kind", "n", "d", "dropout", "seed")
SEEDS = (0, 1, 2)
POINT = {"kind": "grid", "n": 100, "d": 1_000_000, "dropout": 0.1}
HEADLINES = (
    Headline("participant's time per round", "client_ms", POINT, SEEDS, unit="ms"),
    Headline("coordinator's time per round", "server_s", POINT, SEEDS, unit="s"),
    Headline("upload against plaintext", "upload_expansion", POINT, SEEDS, unit="x"),
    Headline(
        "secure-aggregation code's share of a real round",
        "secure_work_pct",
        {"kind": "round"},
        SEEDS,
        unit="%",
    ),
)
TARGETS = {"client_ms": 100.0, "server_s": 1.0, "upload_expansion": 1.1, "secure_work_pct": 2.0}


def round_overhead(rounds: int, seed: int, secure_first: bool) -> dict[str, Any]:
    """Median round wall-clock of the quality workload with and without secure
    aggregation (run one after the other, in the order given), and the time spent in
    secure-aggregation code itself."""
    from benchmarks.quality import make_config
    from zenfed.sim.runner import run_simulation
    from zenfed.sim.setup import build_world

    spent = _instrument()
    base = {"sampling.fraction": 0.5, "run.rounds": rounds, "run.eval_every": 1000}
    base["run.seed"] = seed
    arms = [("plaintext", {}), ("secagg", {"secagg.enabled": True, "secagg.clip_norm": 1e3})]
    world = None
    out: dict[str, Any] = {"order": "secure first" if secure_first else "plaintext first"}
    for name, extra in reversed(arms) if secure_first else arms:
        cfg = make_config({**base, **extra, "run.out_dir": f"runs/bench-secagg/{name}"})
        world = world or build_world(cfg)
        spent["s"] = 0.0
        run_simulation(cfg, cfg.run.out_dir, fresh=True, world=world)
        out[f"{name}_instrumented_s"] = spent["s"]
        rows = [json.loads(x) for x in (Path(cfg.run.out_dir) / "metrics.jsonl").open()]
        secs = [r["seconds"] for r in rows[1:]]
        out[f"{name}_round_s"] = float(np.median(secs))
        out[f"{name}_rounds_s"] = secs
    out["round_overhead_pct"] = 100 * (out["secagg_round_s"] / out["plaintext_round_s"] - 1)
    # the same question answered by timers: seconds inside secure-aggregation code per
    # second of secure rounds (the plaintext run calls none of it: its timer stays ~0)
    secure_s = out["secagg_instrumented_s"] - out["plaintext_instrumented_s"]
    out["secure_work_pct"] = 100 * secure_s / sum(out["secagg_rounds_s"])
    out["rounds"] = rounds
    out["cohort"] = 4
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-round", action="store_true", help="only the n x d grid")
    ap.add_argument("--round-only", action="store_true", help="only the round overhead")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    harness.add_arguments(ap)
    args = ap.parse_args()
    extra = {"headlines": [h.describe() for h in HEADLINES], "targets": TARGETS}
    results = harness.open_results("secagg", KEY, args, extra)  # (a dirty --publish: refused)
    for seed in args.seeds if not args.round_only else ():
        for d in DS:
            for n in NS:
                for dropout in DROPOUTS:
                    with results.timed() as t:
                        row = {"kind": "grid", "n": n, "d": d, "dropout": dropout, "seed": seed}
                        row |= secure(n, d, dropout, seed) | plaintext(n, d, dropout, seed)
                        row["upload_expansion"] = row["bytes_up"] / row["plaintext_bytes_up"]
                    results.record(row, t)
                    print(
                        f"seed {seed} n={n} d={d:.0e} drop={dropout:.0%}: client "
                        f"{row['client_ms']:.1f} ms (plain {row['plaintext_client_ms']:.1f}), "
                        f"server {row['server_s']:.3f} s (plain {row['plaintext_server_s']:.3f})",
                        flush=True,
                    )
            results.save()  # a long run keeps what it measured so far
    for i, seed in enumerate(args.seeds if not args.skip_round else ()):
        with results.timed() as t:  # interleaved: the order alternates between runs
            rnd = round_overhead(args.rounds, seed, secure_first=i % 2 == 1)
        results.record(
            {"kind": "round", "n": None, "d": None, "dropout": None, "seed": seed, **rnd}, t
        )
        results.save()
        print(
            f"seed {seed} ({rnd['order']}): round overhead {rnd['round_overhead_pct']:.2f} % "
            f"(median), {rnd['secure_work_pct']:.2f} % (timed secure code)",
            flush=True,
        )
    path = results.save()
    plot(results.rows, path.with_suffix(".png"))
    print(path)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Client and coordinator time against n (means over seeds), secure vs plaintext, per
    d and dropout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = grid_means(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for d in DS:
        for dropout in DROPOUTS:
            sel = [r for r in grid if r["d"] == d and r["dropout"] == dropout]
            label = f"d={d:.0e}, {dropout:.0%} dropout"
            ns = [r["n"] for r in sel]
            axes[0].plot(ns, [r["client_ms"] for r in sel], marker="o", label=label)
            axes[1].plot(ns, [r["server_s"] for r in sel], marker="o", label=label)
        sel = [r for r in grid if r["d"] == d and r["dropout"] == 0.0]
        ns = [r["n"] for r in sel]
        axes[0].plot(ns, [r["plaintext_client_ms"] for r in sel], "k--", alpha=0.5)
        axes[1].plot(ns, [r["plaintext_server_s"] for r in sel], "k--", alpha=0.5)
    axes[0].set(xlabel="participants n", ylabel="ms per participant", title="participant")
    axes[1].set(xlabel="participants n", ylabel="seconds", title="coordinator")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="SecAgg+ (dashed: plaintext)", title_fontsize=7)
    fig.suptitle("SecAgg+ cost per round (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


GRID_FIELDS = (
    "client_ms",
    "plaintext_client_ms",
    "server_s",
    "plaintext_server_s",
    "upload_expansion",
)


def grid_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each grid point's fields averaged over its seeds (with ``seeds``: how many)."""
    points: dict[tuple[int, int, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind") == "grid":
            points.setdefault((r["n"], r["d"], r["dropout"]), []).append(r)
    out = []
    for (n, d, dropout), rs in sorted(
        points.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
    ):
        mean = {f: float(np.mean([r[f] for r in rs])) for f in GRID_FIELDS}
        out.append({"n": n, "d": d, "dropout": dropout, "seeds": len(rs), **mean})
    return out


def report(data: dict[str, Any]) -> str:
    """The secure-aggregation section of docs/benchmarks.md, from ``secagg.json``."""
    from benchmarks.report_tools import headline_lines, provenance_line, run_time

    rows = data["rows"]
    lines = [
        "## Secure aggregation",
        "",
        "The real SecAgg+ classes in one process, every participant timed (key generation and",
        "agreement, Shamir shares and their AES-GCM encryption, decrypting received shares,",
        "fixed-point encoding, masking, answering the unmask stage); the coordinator's time",
        "covers collecting the masked vectors, reconstructing secrets, removing masks and",
        "decoding; 10 % dropout means after sharing keys and before uploading (the expensive",
        "case: their pairwise masks must be rebuilt). Bytes up count every stage's messages.",
        "Plaintext: the same float32 vector as safetensors, and the coordinator summing them.",
        "A real round: the quality workload (SmolLM2-135M-Instruct, cohorts of 4, dense delta),",
        "plaintext and secure runs interleaved (the order alternates); the headline is the",
        "timed share of secure-aggregation code in the secure rounds (issue 5's target), and",
        "the table after the grid also gives each pair's median whole-round times.",
        "",
        f"Re-run: `python -m benchmarks.secagg` ({run_time(rows)} here; `--skip-round` for the",
        "grid alone), into the scratch folder; `--publish` writes here from a clean tree.",
        "",
        *headline_lines(data, HEADLINES, TARGETS, rows),
        "",
        "| n | d | dropout | seeds | participant | (plaintext) | coordinator | (plaintext) "
        "| upload vs plaintext |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in grid_means(rows):
        lines.append(
            f"| {g['n']} | 1e{len(str(g['d'])) - 1} | {g['dropout'] * 100:.0f} % | {g['seeds']} "
            f"| {g['client_ms']:.1f} ms | {g['plaintext_client_ms']:.1f} ms "
            f"| {g['server_s']:.3f} s | {g['plaintext_server_s']:.3f} s "
            f"| {g['upload_expansion']:.4f}x |"
        )
    runs = [r for r in rows if r.get("kind") == "round"]
    if runs:
        lines += [
            "",
            "| real round, run (seed) | order | median round, plaintext | secure | difference "
            "| secure code's share |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            lines.append(
                f"| {r['seed']} | {r['order']} | {r['plaintext_round_s']:.3f} s "
                f"| {r['secagg_round_s']:.3f} s | {r['round_overhead_pct']:+.2f} % "
                f"| {r['secure_work_pct']:.2f} % |"
            )
        diff = Stats.of([r["round_overhead_pct"] for r in runs])
        lines += [
            "",
            f"Whole rounds, secure against plaintext, over the {diff.n} pairs: "
            f"{diff.mean:+.2f} % on average (standard deviation {diff.std:.2f} %), against "
            f"{Stats.of([r['secure_work_pct'] for r in runs]).mean:.2f} % of the secure rounds' "
            "time spent inside the timed secure-aggregation code: the rest of the difference is "
            "spent elsewhere in a secure round and is not explained by this benchmark.",
        ]
    lines += ["", provenance_line(data), "", "![SecAgg+ cost](../benchmarks/results/secagg.png)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
