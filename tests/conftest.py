"""Shared fixtures: the tiny random Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from tests.databases import db_url as db_url  # SQLite and PostgreSQL, for the store's tests
from zenfed.config import FederationConfig, parse_config

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

TINY: dict[str, Any] = {
    "name": "tiny-test",
    "model": {"name": "tiny-llama"},
    "data": {
        "corpus": "chatterbot",
        "categories": ["ai", "emotion", "literature"],
        "max_seq_len": 48,
    },
    "train": {"lr": 3e-3, "local_steps": 2, "batch_size": 4},
    "run": {"rounds": 3, "seed": 0},
}


def tiny_config(**sections: dict[str, Any]) -> FederationConfig:
    """The tiny federation with some sections' keys replaced."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


@pytest.fixture(scope="session")
def tiny_cfg() -> FederationConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tokenizer(tiny_cfg: FederationConfig) -> Any:
    from zenfed.model import load_tokenizer

    return load_tokenizer(tiny_cfg.model)
