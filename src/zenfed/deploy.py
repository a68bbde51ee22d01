"""The networked deployment's two programs: the coordinator service and a participant.

    zenfed serve --config federation.toml --state state/      # the operator
    zenfed invite --url http://coord:8000 --operator-token-file state/operator-token
    zenfed join --url http://coord:8000 --token T --name clinic-7 --data notes.jsonl

``serve`` keeps everything under ``--state`` (0700; every file in it 0600): the SQLite
database (unless ``--db`` names another), the blob store, and the operator token. It stops
within a few seconds of SIGTERM, long-polls or not. ``join`` keeps the participant's
Ed25519 identity (0600) and its enrollment beside it, so a restarted participant goes on
without a new token; one whose enrollment record was lost asks the coordinator who it is.
The enrollment token can come from ``--token-file`` or ``$ZENFED_TOKEN`` instead of the
command line, where the process list would show it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from zenfed.config import DataConfig, FederationConfig, SourceConfig, parse_config
from zenfed.errors import ZenfedError

GRACEFUL_SHUTDOWN_S = 3  # open long-polls and uploads get this long after SIGTERM


def private_state_dir(state: Path) -> None:
    """Make ``state`` (0700) and have every file this process creates be its owner's only."""
    os.umask(0o077)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)


def lock_state_dir(state: Path) -> Any:
    """An exclusive lock on ``state`` for this process's lifetime (the open file holding
    it): a second ``zenfed serve`` on the same state would race the first for its rows and
    collect its in-flight blobs as orphans, so it is refused."""
    import fcntl

    f = (state / "serve.lock").open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        f.close()
        raise ZenfedError(
            f"another zenfed serve is using the state folder '{state}'",
            fix="stop it first, or give this one another --state",
        ) from e
    return f


def resolve_token(
    token: str | None,
    token_file: Path | None,
    env: str = "ZENFED_TOKEN",
    flag: str = "--token",
) -> str | None:
    """A secret given on the command line (``flag``, whose value ``ps`` shows), else the
    first word of ``token_file`` (``flag``-file), else ``$env`` (the last two keep it out
    of the process list)."""
    if token and token_file:
        raise ZenfedError(f"give {flag} or {flag}-file, not both", fix="keep one")
    if token_file is not None:
        if not token_file.is_file():
            raise ZenfedError(f"token file '{token_file}' does not exist", fix="check the path")
        lines = token_file.read_text().split()
        if not lines:
            raise ZenfedError(f"token file '{token_file}' is empty", fix="put the token in it")
        return lines[0]
    return token or os.environ.get(env) or None


def visible_secret_warning(flag: str, env: str) -> str:
    """What to say when a secret was passed as ``flag``'s value: every user of the
    machine can read it in the process list for as long as the process runs."""
    return (
        f"warning: {flag}'s value is visible to every user of this machine in the process "
        f"list (ps) while this runs; prefer {flag}-file FILE or the environment variable {env}"
    )


def operator_token(state: Path) -> str:
    """The operator token in ``state/operator-token`` (made, 0600, on first use)."""
    path = state / "operator-token"
    if path.is_file():
        return path.read_text().strip()
    state.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def serve(
    cfg: FederationConfig,
    state: Path,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    upstream: Any = None,
) -> None:
    """Run the coordinator service until interrupted; with ``upstream``
    (``zenfed.regions.Upstream``), as a regional coordinator of the root there: ``cfg``
    gives the region's own sampling, service and secure aggregation, everything else is
    the root's."""
    import uvicorn

    from zenfed.data.federated import load_validation
    from zenfed.model.adapter import get_adapter_state
    from zenfed.model.build import adapter_model
    from zenfed.service.persistent import PersistentCoordinator
    from zenfed.store.blobs import BlobStore
    from zenfed.store.db import Database
    from zenfed.train.evaluate import adapter_loss
    from zenfed.transport.http.app import create_app
    from zenfed.transport.http.server import connection_limits, server_config

    if cfg.attack.kind != "none":
        raise ZenfedError(
            f"the config has [attack] kind = '{cfg.attack.kind}', which only the simulation runs",
            fix="remove the [attack] section from the service's config",
        )
    if cfg.devices.enabled:
        raise ZenfedError(
            "[devices] simulates participants' compute time; a service has real ones",
            fix="remove the [devices] section from the service's config",
        )
    if cfg.gate.source == "heldout":
        raise ZenfedError(
            "gate.source = 'heldout' reads the participants' held-out data, which only a "
            "simulation can",
            fix="give the service gate.source = 'validation_file' and a file of your own",
        )
    if (tls_cert is None) != (tls_key is None):
        raise ZenfedError("TLS needs both --tls-cert and --tls-key", fix="give both or neither")
    for f in (tls_cert, tls_key):
        if f is not None and not f.is_file():
            raise ZenfedError(f"TLS file '{f}' does not exist", fix="check the path")
    from zenfed.logs import configure_json_logging

    configure_json_logging()
    private_state_dir(state)
    lock = lock_state_dir(state)  # held until this process exits
    link = None
    if upstream is not None:  # the root's federation, with the region's own local sections
        cfg, link = upstream.connect(cfg, state)
    token = operator_token(state)
    model, tok = adapter_model(cfg)
    evaluate = None
    if cfg.gate.validation_file is not None:  # the operator's own validation set
        examples = load_validation(cfg.gate.validation_file, cfg.data, tok, cfg.gate.max_examples)
        evaluate = adapter_loss(model, examples, cfg.train.batch_size, int(tok.pad_token_id))
    db = Database(db_url or f"sqlite:///{state / 'zenfed.db'}")
    blobs = BlobStore(state / "blobs")
    initial = get_adapter_state(model)
    region = link.region_for(cfg, initial) if link is not None else None
    fed = PersistentCoordinator(cfg, initial, db, blobs, evaluate=evaluate, region=region)
    del model
    config = server_config(
        create_app(fed, token, background=link.work if link is not None else None),
        connection_limits(cfg.service),  # reads and raises the open-file limit, or warns
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    uvicorn.Server(config).run()
    lock.close()


def local_data(cfg: FederationConfig, data: Path | None, chatterbot: str | None) -> DataConfig:
    """The data section for one participant: its own file, or one chatterbot category."""
    base = cfg.data.model_dump()
    if (data is None) == (chatterbot is None):
        raise ZenfedError("give exactly one of --data FILE and --chatterbot CATEGORY", fix="")
    if data is not None:
        if not data.is_file():
            raise ZenfedError(f"data file '{data}' does not exist", fix="check --data")
        src = SourceConfig(name="local", path=str(data))
        raw = {
            **base,
            "corpus": None,
            "sources": (src.model_dump(),),
            "partition": "natural",
            "partition_field": "source",
        }
    else:
        raw = {
            **base,
            "corpus": "chatterbot",
            "categories": (chatterbot,),
            "sources": (),
            "partition": "natural",
            "partition_field": "category",
        }
    return DataConfig.model_validate(raw)


def join(
    url: str,
    name: str,
    identity_path: Path,
    token: str | None,
    data: Path | None = None,
    chatterbot: str | None = None,
    cafile: Path | None = None,
    memory_gb: float | None = None,
    wait_s: float = 20.0,
    tamper: Any = None,
) -> int:
    """Enroll (first time) and train for the federation until it finishes. ``tamper``
    (``participant.agent.Tamper``; Python only, not on the command line) changes each
    update after training: how tests run a misbehaving agent over real HTTP."""
    from zenfed.data.federated import build_participants
    from zenfed.model.adapter import get_adapter_state
    from zenfed.model.build import adapter_model
    from zenfed.participant.agent import Participant, Runtime
    from zenfed.participant.loop import drive, run_participant
    from zenfed.protocol.auth import Identity
    from zenfed.transport.http.client import CoordinatorClient, CoordinatorRefused

    record = identity_path.with_suffix(".enrollment.json")
    if record.is_file():
        record.chmod(0o600)  # an earlier zenfed wrote it 0644
    me = Identity.load(identity_path) if identity_path.exists() else Identity.create(identity_path)
    client = CoordinatorClient(url, me, verify=str(cafile) if cafile else True, wait_s=wait_s)
    try:
        cfg = parse_config(client.federation(), origin=url)
        model, tok = adapter_model(cfg)
        origin = get_adapter_state(model)  # the root version, as this agent built it
        mine = local_data(cfg, data, chatterbot)
        (pdata,) = build_participants(mine, tok, cfg.run.seed)
        if not record.is_file():
            try:  # enrolled already (the record was lost, or the answer to enroll was)?
                known = client.me()
                _json(record, {"url": url, "participant": known["participant"], "name": name})
            except CoordinatorRefused as e:
                if e.status != 401:
                    raise
        if not record.is_file():
            if not token:
                raise ZenfedError(
                    "this identity is not enrolled yet",
                    fix="pass --token, --token-file or set ZENFED_TOKEN",
                )
            profile = {
                "examples": len(pdata.train),
                "tokens": sum(len(e.input_ids) for e in pdata.train),
                "domain": chatterbot or pdata.meta.get("source", "local"),
                "language": cfg.data.language,
            }
            capacity = {
                "memory_gb": memory_gb if memory_gb is not None else _memory_gb(),
                "device": "cpu",
                "threads": os.cpu_count() or 1,
                "train_tokens_per_s": measure_throughput(
                    model, pdata.train, cfg.train.batch_size, int(tok.pad_token_id)
                ),
            }
            pid, _ = client.enroll(token, name, capacity, profile)
            _json(record, {"url": url, "participant": pid, "name": name})
        runtime = Runtime(
            model=model, pad_id=int(tok.pad_token_id), train=cfg.train, compress=cfg.compress
        )
        state_file = identity_path.with_suffix(".state.safetensors")
        kept = load_participant_state(state_file, identity_path.with_suffix(".state.pt"))
        me_p = Participant(
            name, pdata, runtime, kept, me.key, origin, runtimes=_shaped(cfg, runtime)
        )
        me_p.tamper = tamper
        loop = run_participant(client, me_p, lambda p: save_participant_state(p, state_file))
        accepted = drive(loop, log=_say)
        print(f"federation finished; {accepted} updates accepted", flush=True)
        return accepted
    finally:
        client.close()


def _shaped(cfg: FederationConfig, runtime: Any) -> Any:
    """The agent's models of other adapter shapes, each built the first time a task
    gives it (``[adapters] assign``)."""
    from zenfed.model.build import adapter_model
    from zenfed.participant.agent import Runtime

    built: dict[str, Any] = {}

    def runtime_for(spec: Any) -> Any:
        if spec.id not in built:
            model, _ = adapter_model(cfg, spec)
            built[spec.id] = Runtime(
                model, runtime.pad_id, runtime.train, runtime.compress, spec=spec
            )
        return built[spec.id]

    return runtime_for


def _say(event: Any) -> None:
    """One line per task an agent carried out (or could not)."""
    from zenfed.participant.loop import Done, Failed

    if isinstance(event, Done):
        print(
            f"round {event.task.round + 1}: {event.task.kind} {event.status} "
            f"(loss {event.loss:.4f}) {event.warning}".rstrip(),
            flush=True,
        )
    elif isinstance(event, Failed):
        print(f"round {event.task.round + 1}: {event.error}", flush=True)


def measure_throughput(model: Any, examples: Any, batch_size: int, pad_id: int) -> float:
    """Tokens per second of forward + backward on real batches (a short self-benchmark).

    Two steps, the first as warm-up; gradients are dropped and no weight changes.
    """
    import time

    from zenfed.train.batching import batches
    from zenfed.train.loss import loss_sum

    stream = batches(examples, batch_size, seed=0, pad_id=pad_id)
    model.train()
    rate = 0.0
    for _ in range(2):
        batch = next(stream)
        t0 = time.perf_counter()
        total, _n = loss_sum(model, batch)
        total.backward()
        rate = int(batch["attention_mask"].sum()) / (time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return round(rate, 1)


def save_participant_state(participant: Any, path: Path) -> None:
    """Write what the participant keeps across rounds (atomically, readable by it only):
    ``ParticipantState.to_bytes``, the same bytes a simulation checkpoint holds."""
    from zenfed.store.checkpoint import atomic_write

    data = participant.state.to_bytes()
    atomic_write(path, lambda f: f.write(data))
    path.chmod(0o600)


def load_participant_state(path: Path, legacy: Path | None = None) -> Any:
    """The state saved by :func:`save_participant_state`, or a fresh one.

    ``legacy`` is where an earlier zenfed kept it (``<identity>.state.pt``); it is read
    when ``path`` does not exist yet, and the next save writes ``path``.
    """
    from zenfed.participant.state import ParticipantState

    for candidate in (path, legacy):
        if candidate is not None and candidate.is_file():
            return ParticipantState.from_bytes(candidate.read_bytes())
    return ParticipantState()


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _json(path: Path, data: dict[str, Any]) -> None:
    """Write an agent's record beside its identity, readable by its owner only (it names
    the participant and its coordinator)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a record an earlier zenfed wrote 0644 is tightened too
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2))
