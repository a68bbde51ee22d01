"""Shared helpers for benchmarks: result paths, JSON writing, a bare federated loop."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

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
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# Environment variables that choose which vector kernels torch, MKL and oneDNN run.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def _cpu() -> dict[str, Any]:
    """The processor and the vector kernels torch dispatches to on it: the same code,
    config and seed round differently with AVX-512 and AVX2 kernels (README,
    "Reproducing them"), so a result names them."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        **{k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def _commit() -> str:
    """The code's git commit ("+changes" if the tree differs from it; "" outside git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+changes" if dirty else "")
