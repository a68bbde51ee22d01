"""Shared helpers for benchmarks: result paths, JSON writing, a bare federated loop."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import cpu_model, git_state, versions

RESULTS = Path(__file__).resolve().parent / "results"


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine facts) to benchmarks/results/NAME.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        **payload,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": _cpu(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "packages": _versions(),
            "commit": _commit(),
        },
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


# What a run's numbers depend on besides the code (constraints.txt pins them all).
PACKAGES = ("transformers", "peft", "tokenizers", "safetensors", "numpy", "gguf", "accelerate")


def _versions() -> dict[str, str]:
    return versions(PACKAGES)


# Environment variables that choose which vector kernels torch, MKL and oneDNN run.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def _cpu() -> dict[str, Any]:
    """The processor and the vector kernels torch dispatches to on it: the same code,
    config and seed round differently with AVX-512 and AVX2 kernels (README,
    "Reproducing them"), so a result names them."""
    return {
        "model": cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        **{k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def _commit() -> str:
    """The code's git commit ("+changes" if the tree differs from it; "" outside git)."""
    head, dirty = git_state()
    return head + ("+changes" if dirty and head else "")
