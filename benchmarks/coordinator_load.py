"""Coordinator load benchmark: many light agents against the real service on loopback.

    python -m benchmarks.coordinator_load                      # the suite below, ~15 min
    python -m benchmarks.coordinator_load --agents 200 --db postgresql --codec compressed
    python -m benchmarks.coordinator_load --compare-regions    # 1,000 flat vs 4 x 250

The coordinator (FastAPI under uvicorn, SQLite or PostgreSQL, blob store) runs in its own
process with a 2 MB float32 "adapter"; N agents in this process (asyncio, one httpx client
and connection each, as separate agent processes would have) enroll with tokens, then
long-poll for tasks and upload signed updates for several rounds; no training. Uploads
are dense float32 (2 MB, the worst case) or compressed by the pipeline the communication
benchmark measured (top-k 10 %, 4-bit, zstd). Reports per run: uploads per second
(from the last enrollment to the last answer), upload latency p50/p99, errors, the
coordinator's peak RSS, and the CPU seconds of the coordinator and of the load generator:
both share this machine's cores, so the load generator's share is capacity the
coordinator did not have. With regions, the agents join regional coordinators (``zenfed
serve --upstream``'s code) of one root, and the root's CPU and the update bytes it
received show its load. Writes benchmarks/results/coordinator_load.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

from benchmarks.common import RESULTS, write_json

SHAPE = (512, 1024)  # 2 MiB of float32
COMPRESSED = [
    {"codec": "topk", "fraction": 0.1},
    {"codec": "quantize", "bits": 4},
    {"codec": "zstd"},
]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
OP = {"authorization": "Bearer op"}


@dataclass(frozen=True)
class Setup:
    """One run: how many agents, which database, which update encoding, how many rounds."""

    agents: int
    db: str = "sqlite"  # or "postgresql"
    codec: str = "dense"  # or "compressed"
    rounds: int = 3
    regions: int = 0  # > 0: the agents join this many regional coordinators of one root


SUITE = [
    Setup(50),
    Setup(200),
    Setup(1000),
    Setup(200, db="postgresql"),
    Setup(1000, db="postgresql"),
    Setup(200, codec="compressed"),
    Setup(1000, regions=4),
]


def _config(s: Setup, minimum: int | None = None) -> Any:
    from zenfed.config import parse_config

    pipeline = COMPRESSED if s.codec == "compressed" else []
    return parse_config(
        {
            "data": {"categories": ["ai"]},
            "sampling": {"fraction": 1.0, "min_participants": minimum or s.agents},
            "run": {"rounds": s.rounds},
            # every agent connects from loopback: no cap per address (as behind a proxy)
            "service": {
                "round_timeout_s": 900.0,
                "long_poll_s": 10.0,
                "max_connections_per_client": 0,
            },
            "compress": {"pipeline": pipeline},
        }
    )


def serve(state: Path, port: int, s: Setup, db_url: str, minimum: int, up: list[str]) -> None:
    """The coordinator process: the real service over a synthetic 2 MB adapter; with
    ``up`` (root URL, region name, invite), a regional coordinator of that root."""
    import torch
    import uvicorn

    from zenfed.regions import Upstream
    from zenfed.service.persistent import PersistentCoordinator
    from zenfed.store.blobs import BlobStore
    from zenfed.store.db import Database
    from zenfed.transport.http.app import create_app
    from zenfed.transport.http.server import connection_limits, server_config

    cfg, initial, link, region = _config(s, minimum), {"w": torch.zeros(SHAPE)}, None, None
    if up:
        cfg, link = Upstream(up[0], up[1], up[2]).connect(cfg, state)
        region = link.region_for(cfg, initial)
    fed = PersistentCoordinator(
        cfg, initial, Database(db_url), BlobStore(state / "blobs"), region=region
    )
    config = server_config(  # the connection guard of `zenfed serve`
        create_app(fed, "op", background=link.work if link else None),
        connection_limits(cfg.service),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        backlog=4096,
    )
    uvicorn.Server(config).run()


async def enroll(url: str, i: int, client: Any) -> Any:
    """An invite (as the operator) and an enrollment: the agent's identity."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from zenfed.protocol.auth import Identity

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
    r.raise_for_status()
    return me


async def agent(
    url: str, me: Any, payload: bytes, lat: list[float], errors: list[str], client: Any
) -> None:
    """Poll and upload until the federation finishes."""
    from zenfed.protocol.auth import sign_request

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


def _payloads(s: Setup, n: int) -> list[bytes]:
    import torch

    from zenfed.compress import Pipeline

    pipe = Pipeline(_config(s).compress, {"w": SHAPE})
    g = torch.Generator().manual_seed(0)
    return [
        pipe.to_bytes(pipe.encode({"w": torch.randn(SHAPE, generator=g) * 1e-3}, shared_seed=0))
        for _ in range(n)
    ]


@contextmanager
def database(kind: str, state: Path) -> Iterator[str]:
    """A fresh database of ``kind`` for one run (a PostgreSQL one is dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{state / 'zenfed.db'}"
        return
    import psycopg

    name = f"zenfed_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def _start(state: Path, s: Setup, db_url: str, minimum: int, *up: str) -> tuple[Any, str]:
    """A coordinator process (a root, a flat one or a region) and its URL, once healthy."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    state.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.coordinator_load", "--serve", str(state)),
            *("--port", str(port), "--agents", str(s.agents), "--rounds", str(s.rounds)),
            *("--codec", s.codec, "--db-url", db_url, "--min", str(minimum)),
            *((f"--up-url={up[0]}", f"--up-name={up[1]}", f"--up-token={up[2]}") if up else ()),
        ]
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the coordinator at {url} did not come up")


def run(s: Setup) -> dict[str, Any]:
    """Start the coordinator(s), drive the agents through the rounds, measure."""
    import httpx

    state = Path(tempfile.mkdtemp(prefix="zenfed-load-"))
    payloads = _payloads(s, min(s.agents, 16))
    servers: list[Any] = []
    with database(s.db, state) as url_db:
        try:
            root, root_url = _start(state / "root", s, url_db, s.regions or s.agents)
            servers.append(root)
            urls = [root_url]
            if s.regions:  # each region joins the root with an invite of its own
                urls = []
                for i in range(s.regions):
                    r = httpx.post(f"{root_url}/v1/invites", json={}, headers=OP)
                    db = f"sqlite:///{state / f'region{i}' / 'zenfed.db'}"
                    args = (root_url, f"region-{i}", r.json()["token"])
                    server, url = _start(state / f"region{i}", s, db, s.agents // s.regions, *args)
                    servers.append(server)
                    urls.append(url)
            lat: list[float] = []
            errors: list[str] = []
            cpu0 = _own_cpu_s()

            async def main() -> tuple[float, float]:
                clients = [httpx.AsyncClient(timeout=900) for _ in range(s.agents)]
                at = [urls[i % len(urls)] for i in range(s.agents)]
                try:
                    t0 = time.perf_counter()
                    ids = await asyncio.gather(
                        *(enroll(at[i], i, c) for i, c in enumerate(clients))
                    )
                    t1 = time.perf_counter()
                    await asyncio.gather(
                        *(
                            agent(at[i], me, payloads[i % len(payloads)], lat, errors, clients[i])
                            for i, me in enumerate(ids)
                        )
                    )
                    return t1 - t0, time.perf_counter() - t1
                finally:
                    await asyncio.gather(*(c.aclose() for c in clients))

            enrolling, wall = asyncio.run(main())
            client_cpu = _own_cpu_s() - cpu0
            peak, server_cpu = _peak_rss_mb(root.pid), _cpu_s(root.pid)
            regions_cpu = sum(_cpu_s(p.pid) for p in servers[1:])
            root_in = _metric(root_url, "zenfed_bytes_in_total")
        finally:
            for p in servers:
                p.terminate()
                p.wait()
            shutil.rmtree(state, ignore_errors=True)  # a run stores gigabytes of uploads
    ms = np.array(lat) * 1000
    return {
        **asdict(s),
        "uploads": len(lat),
        "uploads_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": len(errors),
        "error_samples": errors[:5],
        "peak_rss_mb": peak,  # the root's (the flat coordinator's)
        "seconds": wall,  # from the last enrollment to the last upload's answer
        "enroll_seconds": enrolling,
        "server_cpu_s": server_cpu,  # the root (or flat) process: start-up and enrollment included
        "regions_cpu_s": regions_cpu,
        "client_cpu_s": client_cpu,  # the load generator, enrollment included
        "root_mb_in": root_in / 2**20,  # update bytes the root received
        "update_kb": len(payloads[0]) / 1024,
    }


def _metric(url: str, name: str) -> float:
    """A counter of the service's Prometheus metrics."""
    import httpx

    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="*", help="instead of the suite")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--codec", choices=["dense", "compressed"], default="dense")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--regions", type=int, default=0, help="agents join this many regions")
    ap.add_argument("--db-url", help=argparse.SUPPRESS)
    ap.add_argument("--min", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--up-url", help=argparse.SUPPRESS)
    ap.add_argument("--up-name", help=argparse.SUPPRESS)
    ap.add_argument("--up-token", help=argparse.SUPPRESS)  # an invite may begin with "-"
    ap.add_argument(
        "--compare-regions",
        action="store_true",
        help="only 1,000 agents flat and in 4 regions, added to the committed results",
    )
    args = ap.parse_args()
    if args.serve:
        setup = Setup(args.agents[0], codec=args.codec, rounds=args.rounds)
        up = [args.up_url, args.up_name, args.up_token] if args.up_url else []
        serve(args.serve, args.port, setup, args.db_url, args.min, up)
        return
    if args.compare_regions:
        compare_regions()
        return
    setups = (
        [Setup(n, args.db, args.codec, args.rounds, args.regions) for n in args.agents]
        if args.agents
        else SUITE
    )
    runs = []
    for s in setups:
        row = run(s)
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        runs.append(row)
    if args.agents:
        return  # a one-off: the committed results stay those of the suite
    head = next(
        r
        for r in runs
        if (r["agents"], r["db"], r["codec"], r["regions"]) == (200, "sqlite", "dense", 0)
    )
    result = {
        "agents": 200,
        "uploads_per_s": head["uploads_per_s"],
        "p99_ms": head["p99_ms"],
        "errors": sum(r["errors"] for r in runs),
        "max_agents": max(r["agents"] for r in runs),
        "runs": runs,
        "command": "python -m benchmarks.coordinator_load",
        "cores": os.cpu_count(),
    }
    print(write_json("coordinator_load", result))
    plot(runs, RESULTS / "coordinator_load.png")


def compare_regions() -> None:
    """1,000 agents against one coordinator, then against 4 regional coordinators of one
    root (250 each), in one run; added to the results as ``regions_comparison``."""
    import json

    rows = [run(Setup(1000)), run(Setup(1000, regions=4))]
    for row in rows:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    path = RESULTS / "coordinator_load.json"
    result = json.loads(path.read_text())
    flat, regional = rows
    result["regions_comparison"] = {
        "runs": rows,
        "root_cpu_ratio": regional["server_cpu_s"] / flat["server_cpu_s"],
        "root_mb_in_ratio": regional["root_mb_in"] / flat["root_mb_in"],
        "command": "python -m benchmarks.coordinator_load --compare-regions",
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Uploads per second and p99 latency for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['agents']}\n{r['db']}\n{r['codec']}"
        + (f"\n{r['regions']} regions" if r["regions"] else "")
        for r in runs
    ]
    x = np.arange(len(runs))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(x, [r["uploads_per_s"] for r in runs])
    a.axhline(100, color="gray", ls="--", lw=1, label="target at 200 agents")
    a.set_ylabel("uploads per second")
    b.bar(x, [r["p99_ms"] for r in runs], color="tab:orange")
    b.axhline(2000, color="gray", ls="--", lw=1, label="target at 200 agents")
    b.set_ylabel("upload latency p99 (ms)")
    for ax in (a, b):
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Coordinator on loopback; load generator on the same 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
