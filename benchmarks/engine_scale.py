"""Engine scale benchmark: 10,000 virtual participants per round on a tiny Llama, in
process and on Ray.

    python -m benchmarks.engine_scale [--participants 10000] [--rounds 1]

Each participant holds 16 random sequences of 32 tokens and takes one local AdamW step
(batch 16) on a tiny Llama (hidden 64, 2 layers, vocabulary 2048) with LoRA r=8 on q/k/v/o.
Compares seconds per round of the engine (Coordinator + InMemoryTransport + Participant,
with the runner's per-round checkpoint) against a bare in-process loop doing the same
steps, and reports ``scale_overhead`` = engine / bare (target <= 1.5); then the same
rounds with the participants on Ray actors (``run.backend = "ray"``: one actor per core,
each holding the model once and a share of the participants, one torch thread each) and
``ray_speedup`` = in-process engine / Ray engine on this machine's cores.

Writes benchmarks/results/engine_scale.json and engine_scale.png.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, write_json
from zenfed.config import FederationConfig, parse_config
from zenfed.coordinator import Coordinator, CoordinatorPort
from zenfed.data.examples import ParticipantData, TokenizedExample
from zenfed.model import adapter_parameters, attach_lora, get_adapter_state, load_base_model
from zenfed.participant import Participant, Runtime
from zenfed.sim.progress import Progress
from zenfed.sim.runner import SimClock, run_round
from zenfed.store import save_checkpoint
from zenfed.train.loss import loss_sum
from zenfed.transport import InMemoryTransport

SEQS, SEQ_LEN, VOCAB = 16, 32, 2048


def make_config(rounds: int) -> FederationConfig:
    """The tiny federation: one local step of batch 16, plain FedAvg."""
    return parse_config(
        {
            "model": {
                "name": "tiny-llama",
                "tiny_hidden_size": 64,
                "tiny_layers": 2,
                "tiny_vocab_size": VOCAB,
            },
            "lora": {"r": 8, "alpha": 16},
            "train": {"lr": 1e-3, "local_steps": 1, "batch_size": SEQS},
            "run": {"rounds": rounds},
        }
    )


def make_data(n: int) -> list[ParticipantData]:
    """n participants with 16 random training sequences (and one held-out) each."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(3, VOCAB, (SEQS + 1, SEQ_LEN), generator=g).tolist()
        ex = [TokenizedExample(tuple(s), tuple(s)) for s in ids]
        out.append(ParticipantData(name=f"p{i:04d}", train=tuple(ex[:SEQS]), heldout=(ex[SEQS],)))
    return out


def engine_rounds(
    cfg: FederationConfig, model: Any, data: list[ParticipantData], rounds: int
) -> list[float]:
    """Seconds per round through the real engine, as the simulation runner drives it."""
    runtime = Runtime(model=model, pad_id=0, train=cfg.train)
    parts = {d.name: Participant(d.name, d, runtime) for d in data}
    coord = Coordinator(cfg, get_adapter_state(model), {d.name: len(d.train) for d in data})
    port = CoordinatorPort(coord, clock=SimClock())
    transport = InMemoryTransport(port, parts)
    return timed_rounds(
        port, transport, rounds, lambda: {k: p.state.to_bytes() for k, p in parts.items()}
    )


def timed_rounds(
    port: CoordinatorPort, transport: Any, rounds: int, states: Callable[[], dict[str, bytes]]
) -> list[float]:
    """Seconds per round as the simulation runner drives it: the round, then the
    checkpoint of the coordinator and every participant's state (``states()``)."""
    clock = port.clock
    assert isinstance(clock, SimClock)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            t0 = time.perf_counter()
            history = [run_round(port, transport, clock, Progress(enabled=False))]
            kept = port.engine.state.to_bytes()
            save_checkpoint(Path(tmp) / "checkpoint.safetensors", kept, states(), history)
            times.append(time.perf_counter() - t0)
    return times


def bare_rounds(
    cfg: FederationConfig, model: Any, data: list[ParticipantData], rounds: int
) -> list[float]:
    """The same steps with nothing but PyTorch + PEFT: a loop over participants."""
    params = adapter_parameters(model)
    glob = {k: p.detach().clone() for k, p in params.items()}
    batches = {d.name: torch.tensor([e.input_ids for e in d.train]) for d in data}
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        acc = {k: torch.zeros_like(v) for k, v in glob.items()}
        for d in data:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(glob[k])
            opt = torch.optim.AdamW(list(params.values()), lr=cfg.train.lr, weight_decay=0.0)
            ids = batches[d.name]
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            total, n = loss_sum(model, batch)
            (total / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                for k, p in params.items():
                    acc[k].add_(p - glob[k], alpha=len(d.train))
        glob = {k: glob[k] + acc[k] / (len(data) * SEQS) for k in glob}
        times.append(time.perf_counter() - t0)
    return times


def bench_participants(n: int, cfg: FederationConfig) -> dict[str, Participant]:
    """The benchmark's participants over one model: what each Ray actor builds."""
    base, _ = load_base_model(cfg.model)
    torch.manual_seed(0)
    model = attach_lora(base, cfg.lora)
    runtime = Runtime(model=model, pad_id=0, train=cfg.train)
    return {d.name: Participant(d.name, d, runtime) for d in make_data(n)}


def ray_rounds(
    cfg: FederationConfig, model: Any, data: list[ParticipantData], rounds: int
) -> list[float]:
    """Seconds per round through the engine with the participants on Ray actors."""
    import functools
    import os

    from zenfed.sim.ray_backend import RayPool, RayTransport

    root = str(Path(__file__).resolve().parent.parent)  # the actors import this module
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"backend": "ray"})})
    build = functools.partial(bench_participants, len(data))
    coord = Coordinator(cfg, get_adapter_state(model), {d.name: len(d.train) for d in data})
    port = CoordinatorPort(coord, clock=SimClock())
    with RayPool(cfg, [d.name for d in data], build) as pool:
        transport = RayTransport(port, pool.participants, pool=pool)
        return timed_rounds(port, transport, rounds, pool.states)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    cfg = make_config(args.rounds)
    base, _ = load_base_model(cfg.model)
    torch.manual_seed(0)
    model = attach_lora(base, cfg.lora)
    data = make_data(args.participants)
    bare = bare_rounds(cfg, model, data, args.rounds)
    engine = engine_rounds(cfg, model, data, args.rounds)
    on_ray = ray_rounds(cfg, model, data, args.rounds)
    bare2 = bare_rounds(cfg, model, data, args.rounds)  # before and after: machine drift
    bare_s = statistics.median(bare + bare2)
    engine_s, ray_s = statistics.median(engine), statistics.median(on_ray)
    n = args.participants
    result = {
        "participants": n,
        "engine_s_per_round": engine_s,
        "bare_s_per_round": bare_s,
        "ray_s_per_round": ray_s,
        "scale_overhead": engine_s / bare_s,
        "ray_speedup": engine_s / ray_s,
        "runs": [
            {"participants": n, "backend": "bare", "s_per_round": bare_s},
            {
                "participants": n,
                "backend": "process",
                "s_per_round": engine_s,
                "scale_overhead": engine_s / bare_s,
            },
            {
                "participants": n,
                "backend": "ray",
                "s_per_round": ray_s,
                "scale_overhead": ray_s / bare_s,
                "speedup_over_process": engine_s / ray_s,
            },
        ],
        "engine_rounds": engine,
        "ray_rounds": on_ray,
        "bare_rounds": bare + bare2,
        "torch_threads_in_process": torch.get_num_threads(),
        "command": "python -m benchmarks.engine_scale",
    }
    print(
        f"engine {engine_s:.2f} s/round, bare {bare_s:.2f} s/round, ray {ray_s:.2f} s/round, "
        f"overhead {engine_s / bare_s:.3f}x, ray speed-up {engine_s / ray_s:.2f}x"
    )
    print(write_json("engine_scale", result))
    plot(result, RESULTS / "engine_scale.png")


def plot(r: dict[str, Any], path: Path) -> None:
    """Seconds per round, engine vs bare loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(
        ["bare loop", "engine, in process", "engine, Ray actors"],
        [r["bare_s_per_round"], r["engine_s_per_round"], r["ray_s_per_round"]],
        color=["grey", "tab:blue", "tab:orange"],
    )
    ax.set_ylabel("seconds per round")
    ax.set_title(
        f"{r['participants']} participants x 1 step: overhead {r['scale_overhead']:.2f}x, "
        f"Ray {r['ray_speedup']:.2f}x faster"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
