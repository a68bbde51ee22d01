"""Coordinator load benchmark: many light agents against the real service on loopback.

    python -m benchmarks.coordinator_load                     # 50, 100, 200 agents
    python -m benchmarks.coordinator_load --agents 200 --rounds 3

The coordinator (FastAPI under uvicorn, SQLite, blob store) runs in its own process with a
2 MB float32 "adapter"; N agents in this process (asyncio + httpx) enroll with tokens,
long-poll for tasks and upload random 2 MB updates, signed, for several rounds; no
training. Reports uploads per second, upload latency p50/p99, the coordinator's peak RSS
(VmHWM) and errors, for each N: memory should stay flat as N grows (uploads are streamed
through a bounded number of slots and folded into a running mean). Writes
benchmarks/results/coordinator_load.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

from benchmarks.common import RESULTS, write_json

SHAPE = (512, 1024)  # 2 MiB of float32


def _config(agents: int, rounds: int) -> Any:
    from zenfed.config import parse_config

    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"fraction": 1.0, "min_participants": agents},
            "run": {"rounds": rounds},
            "service": {"round_timeout_s": 600.0, "long_poll_s": 10.0},
        }
    )


def serve(state: Path, port: int, agents: int, rounds: int) -> None:
    """The coordinator process: the real service over a synthetic 2 MB adapter."""
    import torch
    import uvicorn

    from zenfed.coordinator.persistent import PersistentCoordinator
    from zenfed.store.blobs import BlobStore
    from zenfed.store.db import Database
    from zenfed.transport.http.app import create_app

    fed = PersistentCoordinator(
        _config(agents, rounds),
        {"w": torch.zeros(SHAPE)},
        Database(f"sqlite:///{state / 'zenfed.db'}"),
        BlobStore(state / "blobs"),
    )
    uvicorn.run(
        create_app(fed, "op"),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_keep_alive=75,
    )


async def agent(
    url: str, i: int, payload: bytes, lat: list[float], errors: list[str], client: Any
) -> None:
    """Enroll, then poll and upload until the federation finishes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zenfed.protocol.auth import Identity, sign_request

    me = Identity(Ed25519PrivateKey.generate())
    r = await client.post(f"{url}/v1/invites", json={}, headers={"authorization": "Bearer op"})
    token = r.json()["token"]
    r = await client.post(
        f"{url}/v1/enroll",
        json={
            "token": token,
            "name": f"agent-{i}",
            "public_key": base64.b64encode(me.public_key).decode(),
            "capacity": {"memory_gb": 16},
            "data_profile": {"examples": 100},
        },
    )
    if r.status_code != 200:
        errors.append(f"enroll {r.status_code}")
        return
    while True:
        path = "/v1/task?wait=10"
        r = await client.get(url + path, headers=sign_request(me, "GET", path, b""))
        if r.status_code == 410:
            return
        if r.status_code == 204:
            continue
        if r.status_code != 200:
            errors.append(f"task {r.status_code}")
            return
        task = r.json()
        meta = {
            "base_version": task["version"],
            "num_examples": 100,
            "examples_seen": 8,
            "num_tokens": 512,
            "seconds": 1.0,
            "train_loss": 2.0,
            "steps": 1,
        }
        path = f"/v1/rounds/{task['round']}/update?{urlencode(meta)}"
        headers = {
            **sign_request(me, "PUT", path, payload),
            "content-type": "application/octet-stream",
        }
        t0 = time.perf_counter()
        r = await client.put(url + path, content=payload, headers=headers)
        lat.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors.append(f"upload {r.status_code}: {r.text[:100]}")


def _payloads(n: int) -> list[bytes]:
    import torch

    from zenfed.compress import Pipeline

    pipe = Pipeline(_config(1, 1).compress, {"w": SHAPE})
    g = torch.Generator().manual_seed(0)
    return [
        pipe.to_bytes(pipe.encode({"w": torch.randn(SHAPE, generator=g) * 1e-3}, shared_seed=0))
        for _ in range(n)
    ]


def run(agents: int, rounds: int) -> dict[str, Any]:
    """Start a coordinator, drive ``agents`` agents through ``rounds`` rounds, measure."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    state = Path(tempfile.mkdtemp(prefix="zenfed-load-"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.coordinator_load",
            "--serve",
            str(state),
            "--port",
            str(port),
            "--agents",
            str(agents),
            "--rounds",
            str(rounds),
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        payloads = _payloads(min(agents, 16))
        lat: list[float] = []
        errors: list[str] = []

        async def main() -> float:
            limits = httpx.Limits(max_connections=agents + 8, max_keepalive_connections=agents)
            async with httpx.AsyncClient(timeout=600, limits=limits) as client:
                t0 = time.perf_counter()
                await asyncio.gather(
                    *(
                        agent(url, i, payloads[i % len(payloads)], lat, errors, client)
                        for i in range(agents)
                    )
                )
                return time.perf_counter() - t0

        wall = asyncio.run(main())
        peak = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait()
    ms = np.array(lat) * 1000
    return {
        "agents": agents,
        "rounds": rounds,
        "uploads": len(lat),
        "uploads_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "peak_rss_mb": peak,
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": wall,
        "update_mb": len(payloads[0]) / 2**20,
    }


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="*", default=[50, 100, 200])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.agents[0], args.rounds)
        return
    runs = []
    for n in args.agents:
        row = run(n, args.rounds)
        print(row, flush=True)
        runs.append(row)
    top = runs[-1]
    result = {
        **{k: top[k] for k in ("agents", "uploads_per_s", "p50_ms", "p99_ms", "peak_rss_mb")},
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
        "command": "python -m benchmarks.coordinator_load",
        "cores": os.cpu_count(),
    }
    print(write_json("coordinator_load", result))
    plot(runs, RESULTS / "coordinator_load.png")


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Peak coordinator memory and upload latency against the number of agents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["agents"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    a.plot(n, [r["peak_rss_mb"] for r in runs], marker="o")
    a.set_xlabel("concurrent agents")
    a.set_ylabel("coordinator peak RSS (MB)")
    a.set_ylim(bottom=0)
    b.plot(n, [r["p50_ms"] for r in runs], marker="o", label="p50")
    b.plot(n, [r["p99_ms"] for r in runs], marker="o", label="p99")
    b.set_xlabel("concurrent agents")
    b.set_ylabel("upload latency (ms)")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle("Coordinator on loopback, 2 MB updates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
