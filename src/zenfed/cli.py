"""The zenfed command line.

    zenfed simulate --config examples/demo.toml --baseline centralized
    zenfed plan --config examples/private.toml --holders 100   # what DP will cost, before
    zenfed export --run runs/demo --out exported --merged
    zenfed serve --config federation.toml --state state/        # the coordinator service
    zenfed invite --url http://127.0.0.1:8000 --state state/    # an enrollment token
    zenfed join --url http://127.0.0.1:8000 --token T --name clinic --data notes.jsonl
    zenfed status --url http://127.0.0.1:8000 --state state/
    zenfed revoke clinic --url http://127.0.0.1:8000 --state state/

Errors a user can fix print one line (problem; fix) and exit with status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from zenfed.errors import ZenfedError

if TYPE_CHECKING:
    from zenfed.config import FederationConfig

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Federated LoRA fine-tuning of open LLMs."
)
console = Console()
err_console = Console(stderr=True)


def _fail(e: ZenfedError) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def simulate(
    config: Annotated[Path, typer.Option(help="federation TOML file")],
    out: Annotated[Path | None, typer.Option(help="run folder (default: run.out_dir)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out")] = False,
    fresh: Annotated[bool, typer.Option(help="replace an existing run in --out")] = False,
    baseline: Annotated[
        list[str] | None, typer.Option(help="also run a baseline: centralized, local (repeatable)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key, e.g. --set train.lr=3e-4"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help='run the participants on the Ray cluster there ("auto", host:port)'),
    ] = None,
) -> None:
    """Run N virtual participants through the real round engine: in this process, or on
    Ray actors (run.backend = "ray", or --ray-address)."""
    from zenfed.config import load_config

    overrides = list(set_ or [])
    if ray_address is not None:
        overrides += ["run.backend=ray", f"ray.address={ray_address}"]
    try:
        cfg = load_config(config, _parse_overrides(overrides))  # fails fast: no torch yet
        from zenfed.sim.progress import Progress
        from zenfed.sim.runner import run_simulation

        with Progress(enabled=not quiet, console=console) as progress:
            summary = run_simulation(
                cfg, out, resume=resume, fresh=fresh, baselines=baseline or [], progress=progress
            )
    except ZenfedError as e:
        _fail(e)
        return
    folder = Path(out or cfg.run.out_dir)
    for line, s in summary.get("lines", {}).items():  # several model lines: one table each
        _print_summary(s, folder / "lines" / line, f"zenfed simulation, line '{line}'")
    if "lines" not in summary:
        _print_summary(summary, folder)


@app.command()
def plan(
    config: Annotated[Path, typer.Option(help="federation TOML file")],
    holders: Annotated[
        int | None,
        typer.Option(help="participants (default: the simulation's, from [data])"),
    ] = None,
    examples: Annotated[
        int | None,
        typer.Option(help="a holder's training examples: plan its record-level DP-SGD"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key, e.g. --set run.rounds=100"),
    ] = None,
) -> None:
    """Before training: the epsilon a run will spend, its noise per coordinate against the
    largest possible update's, and the holders per round (or, for a holder's DP-SGD, the
    batch) that keep it below the bound."""
    from zenfed.config import load_config

    try:
        cfg = load_config(config, _parse_overrides(list(set_ or [])))
        from zenfed.model.adapter import adapter_parameters
        from zenfed.model.build import adapter_model

        participant = cfg.privacy.enabled or examples is None
        n = _plan_holders(cfg, holders) if participant else 0
        model, _ = adapter_model(cfg)
        shapes = {k: tuple(v.shape) for k, v in adapter_parameters(model).items()}
        if participant:
            _print_plan(cfg, config, n, shapes)
        if examples is not None:
            _print_record_plan(cfg, config, examples, shapes)
    except ZenfedError as e:
        _fail(e)


def _plan_holders(cfg: FederationConfig, holders: int | None) -> int:
    n = holders if holders is not None else cfg.data.num_participants
    if n is None and cfg.data.partition == "natural" and not cfg.data.sources:
        n = len(cfg.data.categories)  # one participant per chatterbot category
    if n is None:
        raise ZenfedError("how many participants will take part?", fix="pass --holders N")
    return n


def _print_plan(
    cfg: FederationConfig, config: Path, n: int, shapes: dict[str, tuple[int, ...]]
) -> None:
    from zenfed.privacy.planner import plan_of, swamping_warning

    p = plan_of(cfg, n, shapes)
    rows = (
        ("epsilon over run.rounds", f"{p.epsilon:.3f} at delta {p.delta:g} ({p.rounds} rounds)"),
        ("noise multiplier z, sampling rate q", f"{p.noise_multiplier:.4g}, {p.sampling_rate:g}"),
        ("holders N, per round q*N", f"{p.holders:,}, {p.expected_cohort:.1f}"),
        ("noised values d (of trained)", f"{p.dimensions:,} (of {p.trained:,})"),
        ("noise per coordinate (x C)", f"{p.noise_per_coordinate:.3g}"),
        ("largest update per coordinate (x C)", f"{p.update_per_coordinate:.3g}"),
        ("a round's update reaches (norm) / C", _reach(p.update_norm_reach, p.clip_norm)),
        ("noise / update a round", f"{p.round_ratio:.2f}"),
        ("noise / update over the run", f"{p.ratio:.2f} (bound {p.bound:g})"),
        ("holders per round for the bound", f"{p.holders_per_round_needed:,.0f}"),
    )
    _print_plan_table(f"privacy plan: {config}", rows, swamping_warning(p))


def _reach(reach: float | None, clip: float) -> str:
    if reach is None:
        return "unknown with train.local_epochs (assumed to fill C)"
    return f"{reach:.3g} (lr x local steps x sqrt(d)) / {clip:g}"


def _print_record_plan(
    cfg: FederationConfig, config: Path, examples: int, shapes: dict[str, tuple[int, ...]]
) -> None:
    from zenfed.privacy.planner import (
        adapter_values,
        record_batch_needed,
        record_plan,
        record_swamping_warning,
    )

    d = adapter_values(shapes)  # DP-SGD noises the trained values themselves
    p = record_plan(cfg, examples, d)
    needed = record_batch_needed(cfg, examples, d)
    rows = (
        ("epsilon per record", f"{p.epsilon:.3f} at delta {p.delta:g} ({p.steps} local steps)"),
        ("noise multiplier z, sampling rate q", f"{p.noise_multiplier:.4g}, {p.sampling_rate:.4g}"),
        ("records, expected batch q*N", f"{p.examples:,}, {p.expected_batch:.1f}"),
        ("noised values d", f"{p.dimensions:,}"),
        ("noise / gradient per coordinate", f"{p.ratio:.2f} (bound {p.bound:g})"),
        ("expected batch for the bound", "none" if needed is None else f"{needed:,}"),
    )
    title = f"record-level DP-SGD plan of a holder: {config}"
    _print_plan_table(title, rows, record_swamping_warning(p, needed, searched=True))


def _print_plan_table(title: str, rows: tuple[tuple[str, str], ...], warning: str | None) -> None:
    table = Table(title=title, show_header=False)
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    console.print(f"[bold yellow]warning:[/] {warning}" if warning else "noise within the bound")


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="a simulation run folder")],
    out: Annotated[Path, typer.Option(help="where to write the export")],
    merged: Annotated[bool, typer.Option(help="merge the adapter into the base model")] = False,
) -> None:
    """Export a run's global adapter as a PEFT folder (or a merged transformers model)."""
    from zenfed.config import parse_config
    from zenfed.model import export_adapter, export_merged
    from zenfed.model.build import adapter_model
    from zenfed.sim.runner import load_run

    try:
        cfg_file = run / "config.json"
        if not cfg_file.is_file():
            raise ZenfedError(
                f"'{run}' is not a run folder (no config.json)",
                fix="pass the --out folder of a simulate run",
            )
        cfg = parse_config(json.loads(cfg_file.read_text()), origin=str(cfg_file))
        state, _, _ = load_run(run)
        model, tok = adapter_model(cfg)
        if merged:
            export_merged(model, state.published, tok, out)
        else:
            export_adapter(model, state.published, out)
    except ZenfedError as e:
        _fail(e)
    console.print(f"wrote {'merged model' if merged else 'PEFT adapter'} to {out}")


@app.command()
def serve(
    config: Annotated[Path, typer.Option(help="federation TOML file")],
    state: Annotated[Path, typer.Option(help="folder for the database, blobs, operator token")],
    db: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in --state)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="root coordinator's URL: serve as a regional coordinator")
    ] = None,
    upstream_name: Annotated[
        str | None, typer.Option(help="this region's name at the root")
    ] = None,
    upstream_token: Annotated[
        str | None,
        typer.Option(
            help="the root's invite (first time); visible in the process list: prefer "
            "--upstream-token-file or the environment variable ZENFED_UPSTREAM_TOKEN"
        ),
    ] = None,
    upstream_token_file: Annotated[
        Path | None, typer.Option(help="a file holding the root's invite")
    ] = None,
    upstream_cafile: Annotated[
        Path | None, typer.Option(help="CA that signed the root's TLS")
    ] = None,
) -> None:
    """Run the coordinator service (state survives restarts); with --upstream, a regional
    coordinator: a coordinator to its participants and one participant to the root."""
    from zenfed.config import load_config

    try:
        cfg = load_config(config)
        from zenfed.deploy import serve as run_service
        from zenfed.regions import Upstream

        token = _secret(
            upstream_token, upstream_token_file, "ZENFED_UPSTREAM_TOKEN", "--upstream-token"
        )
        link = Upstream.of(upstream, upstream_name, token, upstream_cafile)
        run_service(cfg, state, db, host, port, tls_cert, tls_key, link)
    except ZenfedError as e:
        _fail(e)


def _secret(value: str | None, file: Path | None, env: str, flag: str) -> str | None:
    """A secret from ``flag``, ``flag``-file or ``$env``; a value given on the command line
    is taken, with a warning that the process list shows it."""
    from zenfed.deploy import resolve_token, visible_secret_warning

    secret = resolve_token(value, file, env, flag)
    if value:
        err_console.print(visible_secret_warning(flag, env), soft_wrap=True, highlight=False)
    return secret


def _tls(cafile: Path | None) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(cafile)) if cafile else True


def _operator_call(
    method: str,
    url: str,
    path: str,
    state: Path | None,
    token: str | None,
    cafile: Path | None,
    body: Any = None,
) -> Any:
    """An operator request; a refusal or an unreachable coordinator exits with one line."""
    import httpx

    try:
        headers = {"authorization": f"Bearer {_operator(state, token)}"}
        r = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=body, headers=headers, verify=_tls(cafile)
        )
        if r.status_code != 200:
            try:
                answer = r.json()
                problem, fix = str(answer["error"]), str(answer.get("fix", ""))
            except (ValueError, KeyError, TypeError):
                problem, fix = r.text[:300], ""
            raise ZenfedError(f"coordinator refused ({r.status_code}): {problem}", fix=fix)
    except httpx.HTTPError as e:
        _fail(ZenfedError(str(e), fix="is it running?"))
    except ZenfedError as e:
        _fail(e)
    return r


def _operator(state: Path | None, token: str | None) -> str:
    if token:
        return token
    if state is not None and (state / "operator-token").is_file():
        return (state / "operator-token").read_text().strip()
    raise ZenfedError("no operator credential", fix="pass --state (of serve) or --operator-token")


@app.command()
def invite(
    url: Annotated[str, typer.Option(help="the coordinator's URL")],
    state: Annotated[Path | None, typer.Option(help="the coordinator's --state")] = None,
    operator_token: Annotated[str | None, typer.Option(help="the operator token")] = None,
    label: Annotated[str, typer.Option(help="who the token is for")] = "",
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
) -> None:
    """Print a single-use enrollment token."""
    r = _operator_call("POST", url, "/v1/invites", state, operator_token, cafile, {"label": label})
    print(r.json()["token"])


@app.command()
def status(
    url: Annotated[str, typer.Option(help="the coordinator's URL")],
    state: Annotated[Path | None, typer.Option(help="the coordinator's --state")] = None,
    operator_token: Annotated[str | None, typer.Option(help="the operator token")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
) -> None:
    """Show the federation's state as a table."""
    r = _operator_call("GET", url, "/v1/status", state, operator_token, cafile)
    table = Table(title="zenfed federation", show_header=False)
    for key, value in r.json().items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)


@app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="the participant's name (or id)")],
    url: Annotated[str, typer.Option(help="the coordinator's URL")],
    state: Annotated[Path | None, typer.Option(help="the coordinator's --state")] = None,
    operator_token: Annotated[str | None, typer.Option(help="the operator token")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
) -> None:
    """Revoke a participant: its requests are refused and it is sampled no more (audited)."""
    _on_participant("revoke", name, url, state, operator_token, cafile)


def _on_participant(
    action: str, name: str, url: str, state: Path | None, token: str | None, cafile: Path | None
) -> None:
    from urllib.parse import quote

    path = f"/v1/participants/{quote(name, safe='')}/{action}"
    r = _operator_call("POST", url, path, state, token, cafile, {})
    console.print(f"{action}d {name} ({r.json()['participant'][:12]})")


@app.command()
def reinstate(
    name: Annotated[str, typer.Argument(help="the participant's name (or id)")],
    url: Annotated[str, typer.Option(help="the coordinator's URL")],
    state: Annotated[Path | None, typer.Option(help="the coordinator's --state")] = None,
    operator_token: Annotated[str | None, typer.Option(help="the operator token")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
) -> None:
    """Lift a participant's quarantine: it is sampled again, with a fresh reputation."""
    _on_participant("reinstate", name, url, state, operator_token, cafile)


@app.command()
def rollback(
    to: Annotated[str, typer.Option(help="the version to publish again (id or 8+ hex digits)")],
    url: Annotated[str | None, typer.Option(help="a running coordinator's URL")] = None,
    run: Annotated[Path | None, typer.Option(help="or a simulation run folder")] = None,
    state: Annotated[Path | None, typer.Option(help="the coordinator's --state")] = None,
    operator_token: Annotated[str | None, typer.Option(help="the operator token")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
) -> None:
    """Publish an earlier version again, as a new version whose lineage records the
    rollback (an open round is aborted); participants pick it up like any other."""
    if (url is None) == (run is None):
        _fail(ZenfedError("give exactly one of --url and --run", fix="where to roll back"))
    if run is not None:
        from zenfed.sim.runner import rollback_run

        try:
            v = rollback_run(run, to)
        except ZenfedError as e:
            _fail(e)
        console.print(f"version {v.id[:12]} republishes {v.rollback_of[:12]} in {run}")
        return
    assert url is not None
    r = _operator_call("POST", url, "/v1/rollback", state, operator_token, cafile, {"to": to})
    body = r.json()
    console.print(f"version {body['version'][:12]} republishes {body['rollback_of'][:12]}")


@app.command()
def recompute(
    config: Annotated[Path, typer.Option(help="the federation TOML the service runs")],
    state: Annotated[Path, typer.Option(help="the service's state folder")],
    db: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in --state)")
    ] = None,
) -> None:
    """Recompute every version from what its row says (the updates it names, their
    weights, the stored payloads) and compare with the stored tensors, and read the
    version log back (manifest digests, chain, updates); exits 1 if anything differs."""
    from zenfed.config import load_config
    from zenfed.service.recompute import check_manifests, recompute_versions
    from zenfed.store.blobs import BlobStore
    from zenfed.store.db import Database

    try:
        if not (state / "blobs").is_dir():
            raise ZenfedError(f"'{state}' is not a zenfed serve state folder", fix="check --state")
        database = Database(db or f"sqlite:///{state / 'zenfed.db'}")
        database.upgrade()  # what the service does at start (a no-op on a current store)
        checks = recompute_versions(load_config(config), database, BlobStore(state / "blobs"))
    except ZenfedError as e:
        _fail(e)
    table = Table(title="versions recomputed from their rows")
    for column in ("round", "version", "status", "max error", "why not"):
        table.add_column(column)
    for c in checks:
        error = f"{c.max_error:.2e}" if c.status != "skipped" else ""
        table.add_row(str(c.round + 1), c.version[:12], c.status, error, c.reason)
    console.print(table)
    problems = check_manifests(database)
    for problem in problems:
        err_console.print(f"[bold red]version log:[/] {problem}", soft_wrap=True, highlight=False)
    if any(c.status == "mismatch" for c in checks) or problems:
        raise typer.Exit(1)


@app.command()
def join(
    url: Annotated[str, typer.Option(help="the coordinator's URL")],
    name: Annotated[str, typer.Option(help="this participant's name")],
    identity: Annotated[Path, typer.Option(help="Ed25519 key file (created 0600 if absent)")],
    token: Annotated[
        str | None,
        typer.Option(
            help="enrollment token (first time); visible in the process list: prefer "
            "--token-file or the environment variable ZENFED_TOKEN"
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="a file holding the enrollment token")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="local data file (JSONL, CSV, ...)")] = None,
    chatterbot: Annotated[str | None, typer.Option(help="or a chatterbot category")] = None,
    cafile: Annotated[Path | None, typer.Option(help="CA certificate for TLS")] = None,
    memory_gb: Annotated[float | None, typer.Option(help="declared memory")] = None,
) -> None:
    """Enroll with the coordinator and train until the federation finishes."""
    try:
        from zenfed.deploy import join as run_join

        secret = _secret(token, token_file, "ZENFED_TOKEN", "--token")
        run_join(url, name, identity, secret, data, chatterbot, cafile, memory_gb)
    except ZenfedError as e:
        _fail(e)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import tomllib

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ZenfedError(f"--set '{item}' is not KEY=VALUE", fix="e.g. --set train.lr=3e-4")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare string
    return overrides


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _print_summary(s: dict[str, Any], out: Path, title: str = "zenfed simulation") -> None:
    table = Table(title=title, show_header=False)
    rows = [
        ("held-out loss (union), before", s["initial_loss"]),
        ("held-out loss (union), federated", s["fed_loss"]),
        ("held-out loss (union), centralized", s.get("central_loss")),
        ("centralized efficiency (L0-Lfed)/(L0-Lc)", s.get("centralized_efficiency")),
        ("local-only average, union held-out", s.get("local_only_loss")),
        (
            "own held-out: federated vs local-only",
            f"{s['fed_own_loss']:.4f} vs {s['local_own_loss']:.4f}"
            if "fed_own_loss" in s
            else None,
        ),
        ("optimizer steps (all participants)", s["fed_steps"]),
        ("bytes uploaded / downloaded", f"{_mb(s['upload_bytes'])} / {_mb(s['download_bytes'])}"),
        ("upload compression vs dense float32", f"{s['compression_ratio']:.1f}x"),
        (
            "privacy spent (participant level)",
            f"epsilon {s['epsilon']:.3f} at delta {s['privacy']['delta']:g}"
            if "epsilon" in s
            else None,
        ),
        ("rounds aborted (no version)", s.get("aborted_rounds") or None),
        ("rounds rejected by the evaluation gate", s.get("rejected_rounds") or None),
        ("quarantined", ", ".join(s.get("quarantined") or {}) or None),
        ("federated run wall time (s)", s["seconds"]),
    ]
    for label, value in rows:
        if value is not None:
            table.add_row(label, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for sample in s.get("samples", []):
        console.print(f"[bold]Q:[/] {sample['prompt']}")
        console.print(f"  base:      {sample['base']}")
        console.print(f"  federated: {sample['federated']}")
    console.print(f"run folder: {out} (metrics.jsonl, loss.png, summary.json, adapter/)")


def main() -> None:
    """Entry point (``python -m zenfed.cli``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
