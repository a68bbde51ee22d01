"""The zenfed command line.

    zenfed simulate --config examples/demo.toml --baseline centralized
    zenfed export --run runs/demo --out exported --merged

Errors a user can fix print one line (problem; fix) and exit with status 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from zenfed.errors import ZenfedError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Federated LoRA fine-tuning of open LLMs."
)
console = Console()


def _fail(e: ZenfedError) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
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
) -> None:
    """Run N virtual participants in this process through the real round engine."""
    from zenfed.config import load_config

    try:
        cfg = load_config(config, _parse_overrides(set_ or []))  # fails fast: no torch yet
        from zenfed.sim.progress import Progress
        from zenfed.sim.runner import run_simulation

        with Progress(enabled=not quiet, console=console) as progress:
            summary = run_simulation(
                cfg, out, resume=resume, fresh=fresh, baselines=baseline or [], progress=progress
            )
    except ZenfedError as e:
        _fail(e)
        return
    _print_summary(summary, Path(out or cfg.run.out_dir))


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="a simulation run folder")],
    out: Annotated[Path, typer.Option(help="where to write the export")],
    merged: Annotated[bool, typer.Option(help="merge the adapter into the base model")] = False,
) -> None:
    """Export a run's global adapter as a PEFT folder (or a merged transformers model)."""
    from zenfed.config import parse_config
    from zenfed.model import attach_lora, export_adapter, export_merged, load_base_model
    from zenfed.store.checkpoint import load_checkpoint

    try:
        cfg_file = run / "config.json"
        if not cfg_file.is_file():
            raise ZenfedError(
                f"'{run}' is not a run folder (no config.json)",
                fix="pass the --out folder of a simulate run",
            )
        cfg = parse_config(json.loads(cfg_file.read_text()), origin=str(cfg_file))
        state, _, _ = load_checkpoint(run / "checkpoint.pt")
        base, tok = load_base_model(cfg.model)
        model = attach_lora(base, cfg.lora)
        if merged:
            export_merged(model, state.params, tok, out)
        else:
            export_adapter(model, state.params, out)
    except ZenfedError as e:
        _fail(e)
    console.print(f"wrote {'merged model' if merged else 'PEFT adapter'} to {out}")


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


def _print_summary(s: dict[str, Any], out: Path) -> None:
    table = Table(title="zenfed simulation", show_header=False)
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
