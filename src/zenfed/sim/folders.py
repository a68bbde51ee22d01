"""A simulation's run folder: what it may hold before a run, and making it anew.

    check_run_dir(out, cfg, resume=False, fresh=False)   # refuses, touching nothing
    init_run_dir(out, cfg)                                # empty, with config.json

A folder holds a run once it has a checkpoint (one line) or a ``lines/`` folder (several
lines, ``sim.lines``); its ``config.json`` names the config it was made with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from zenfed.config import FederationConfig, parse_config
from zenfed.errors import ZenfedError
from zenfed.store.checkpoint import atomic_write

CHECKPOINT = "checkpoint.safetensors"
LINES = "lines"


def check_run_dir(
    out: Path, cfg: FederationConfig, *, resume: bool, fresh: bool, holds: str = CHECKPOINT
) -> None:
    """Refuse a run into ``out`` that would lose or mix work: resuming where there is no
    run of this kind (``holds``: its checkpoint, or its lines folder) or one of another
    config; replacing a run without ``fresh``; writing into a folder that is not a run's."""
    config_file = out / "config.json"
    if resume:
        if not (out / holds).exists() or not config_file.is_file():
            raise ZenfedError(
                f"nothing to resume in '{out}' (no {holds})", fix="run without --resume"
            )
        saved = parse_config(json.loads(config_file.read_text()), origin=str(config_file))
        if saved != cfg:
            raise ZenfedError(
                f"the run in '{out}' was made with a different config",
                fix="resume with the same config, or use another --out",
            )
    elif ((out / CHECKPOINT).exists() or (out / LINES).is_dir()) and not fresh:
        raise ZenfedError(
            f"'{out}' already holds a run",
            fix="pass --resume to continue it, --fresh to replace it",
        )
    elif out.is_dir() and any(out.iterdir()) and not config_file.is_file():
        raise ZenfedError(
            f"'{out}' exists and is not a zenfed run folder; nothing there is touched",
            fix="choose an empty or new --out folder",
        )


def init_run_dir(out: Path, cfg: FederationConfig) -> None:
    """``out`` emptied (a run folder checked by ``check_run_dir``: --fresh, or a run killed
    early) and made again with the config it runs."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dump = json.dumps(cfg.model_dump(mode="json"), indent=2).encode()
    atomic_write(out / "config.json", lambda f: f.write(dump))
