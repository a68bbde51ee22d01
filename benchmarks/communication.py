"""Communication benchmark: uploaded bytes against final loss, for codec pipelines.

    python -m benchmarks.communication                  # every pipeline (about 1 h here)
    python -m benchmarks.communication --only dense,sign --keep

Workload (issue #4): the quality benchmark's (built-in SmolLM2-135M-Instruct, LoRA r=8 on
q/k/v/o, the 8 chatterbot English categories as participants) with its recipe: 60 rounds x
1 local step x a cohort of 2, FedAvg on the server, local lr 3e-3: 120 uploads in all.
Every pipeline runs the same rounds through the engine; bytes are what the in-memory
transport carried (payload lengths), not estimates. Each row is compared with the dense
float32 adapter delta (``dense``) and with full-model FedAvg (every base weight as float32
per upload). Writes benchmarks/results/communication.json and communication.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_json
from benchmarks.quality import make_config
from zenfed.sim.runner import run_simulation
from zenfed.sim.setup import World, build_world

_Q = {"codec": "quantize"}
_Z = {"codec": "zstd"}
_SIGN = [{"codec": "sign"}, _Z]

# name -> overrides of the quality recipe
PIPELINES: dict[str, dict[str, Any]] = {
    "dense": {},
    "dense@lr2e-2": {"train.lr": 2e-2},
    "ffa-lora-dense@lr2e-2": {"lora.freeze_a": True, "train.lr": 2e-2},
    "sign+zstd": {"compress.pipeline": _SIGN},
    "ffa-lora+sign+zstd": {"lora.freeze_a": True, "compress.pipeline": _SIGN},
    "topk10%+quantize4+zstd": {
        "compress.pipeline": [{"codec": "topk", "fraction": 0.1}, {**_Q, "bits": 4}, _Z]
    },
    "randk10%+sign": {"compress.pipeline": [{"codec": "randk", "fraction": 0.1}, *_SIGN]},
    "ffa-lora+randk10%+sign": {
        "lora.freeze_a": True,
        "compress.pipeline": [{"codec": "randk", "fraction": 0.1}, *_SIGN],
    },
    "ffa-lora+randk3%+sign": {
        "lora.freeze_a": True,
        "compress.pipeline": [{"codec": "randk", "fraction": 0.03}, *_SIGN],
    },
    "4-local-steps-dense": {"run.rounds": 15, "train.local_steps": 4},
    "4-local-steps+sign+zstd": {
        "run.rounds": 15,
        "train.local_steps": 4,
        "compress.pipeline": _SIGN,
    },
    "8-local-steps+sign+zstd": {
        "run.rounds": 8,
        "train.local_steps": 8,
        "compress.pipeline": _SIGN,
    },
    "randk30%+sign": {"compress.pipeline": [{"codec": "randk", "fraction": 0.3}, *_SIGN]},
    "ffa-lora+sign+zstd@lr1e-2": {
        "lora.freeze_a": True,
        "train.lr": 1e-2,
        "compress.pipeline": _SIGN,
    },
    "ffa-lora+sign+zstd@lr2e-2": {
        "lora.freeze_a": True,
        "train.lr": 2e-2,
        "compress.pipeline": _SIGN,
    },
    "ffa-lora+randk70%+sign@lr2e-2": {
        "lora.freeze_a": True,
        "train.lr": 2e-2,
        "compress.pipeline": [{"codec": "randk", "fraction": 0.7}, *_SIGN],
    },
    "ffa-lora+randk60%+sign@lr2e-2": {
        "lora.freeze_a": True,
        "train.lr": 2e-2,
        "compress.pipeline": [{"codec": "randk", "fraction": 0.6}, *_SIGN],
    },
    "sign+zstd+downlink-quantize4+zstd": {
        "compress.pipeline": _SIGN,
        "compress.downlink": [{**_Q, "bits": 4}, _Z],
    },
}
BASE: dict[str, Any] = {}  # the quality benchmark's recipe as it is
THRESHOLDS = (1.0, 2.0, 5.0)


def run_one(name: str, world: World | None) -> tuple[dict[str, Any], World]:
    """One federated run of pipeline ``name``: bytes and final loss."""
    overrides = {**BASE, **PIPELINES[name], "run.out_dir": f"runs/bench-comm/{name}"}
    cfg = make_config(overrides)
    if world is None or not world.fits(cfg):
        world = build_world(cfg)  # FFA-LoRA changes which tensors train: another world
    t0 = time.perf_counter()
    s = run_simulation(cfg, cfg.run.out_dir, fresh=True, world=world)
    base_params = sum(p.numel() for n, p in world.model.named_parameters() if "lora_" not in n)
    uploads = int(sum(len(h.get("traffic", {})) for h in _history(cfg.run.out_dir)))
    row = {
        "pipeline": name,
        "overrides": PIPELINES[name],
        "upload_bytes": s["upload_bytes"],
        "download_bytes": s["download_bytes"],
        "uploads": uploads,
        "full_model_bytes": 4 * base_params * uploads,
        "fed_loss": s["fed_loss"],
        "seconds": time.perf_counter() - t0,
    }
    return row, world


def _history(out: str) -> list[dict[str, Any]]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios and loss increases against the dense row; best ratio per loss threshold."""
    dense = next(r for r in rows if r["pipeline"] == "dense")
    for r in rows:
        r["compression_ratio"] = dense["upload_bytes"] / r["upload_bytes"]
        r["vs_full_model"] = r["full_model_bytes"] / r["upload_bytes"]
        r["loss_increase_pct"] = 100.0 * (r["fed_loss"] / dense["fed_loss"] - 1.0)
    best: dict[str, Any] = {}
    for t in THRESHOLDS:
        ok = [r for r in rows if r["loss_increase_pct"] <= t]
        top = max(ok, key=lambda r: r["compression_ratio"])
        best[f"{t:g}%"] = {
            "pipeline": top["pipeline"],
            "compression_ratio": top["compression_ratio"],
        }
    return {"dense_loss": dense["fed_loss"], "best_ratio_within": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated pipeline names")
    ap.add_argument("--keep", action="store_true", help="keep other rows of the last JSON")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(PIPELINES)
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        raise SystemExit(f"unknown pipeline {unknown[0]!r}; known: {', '.join(PIPELINES)}")
    path = RESULTS / "communication.json"
    rows: dict[str, dict[str, Any]] = {}
    if args.keep and path.is_file():
        rows = {r["pipeline"]: r for r in json.loads(path.read_text())["rows"]}
    world: World | None = None
    for name in names:
        row, world = run_one(name, world)
        rows[name] = row
        print(f"{name}: {row['upload_bytes']:.0f} bytes up, loss {row['fed_loss']:.4f}", flush=True)
        write_json("communication", {"complete": False, "rows": list(rows.values())})
    ordered = [rows[n] for n in PIPELINES if n in rows]
    result = {
        **summarize(ordered),
        "rows": ordered,
        "complete": all(n in rows for n in PIPELINES),
        "command": "python -m benchmarks.communication",
    }
    print(write_json("communication", result))
    plot(ordered, RESULTS / "communication.png")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Pareto plot: uploaded bytes (log) against final union held-out loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.scatter(r["upload_bytes"], r["fed_loss"], color="tab:blue")
        ax.annotate(
            r["pipeline"],
            (r["upload_bytes"], r["fed_loss"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    front, best = [], float("inf")
    for r in sorted(rows, key=lambda r: r["upload_bytes"]):
        if r["fed_loss"] < best:
            best = r["fed_loss"]
            front.append(r)
    ax.step(
        [r["upload_bytes"] for r in front],
        [r["fed_loss"] for r in front],
        where="post",
        color="tab:orange",
        label="Pareto front",
    )
    dense = next(r for r in rows if r["pipeline"] == "dense")
    ax.axhline(dense["fed_loss"] * 1.02, ls="--", color="grey", label="dense loss + 2 %")
    ax.set_xscale("log")
    ax.set_xlabel("bytes uploaded over the run (all participants)")
    ax.set_ylabel("union held-out loss after the run")
    ax.set_title("Codec pipelines: 60 rounds x 2 participants, SmolLM2-135M LoRA")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
