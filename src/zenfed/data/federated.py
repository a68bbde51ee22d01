"""Build the participants' private datasets for a simulation from the data config.

    participants = build_participants(cfg.data, tokenizer, seed=0)

Loads the corpus and/or files, partitions them, tokenizes, and splits each participant's
examples into train and held-out parts (a seeded shuffle; ``heldout_fraction`` held out).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from zenfed.config import DataConfig, SourceConfig
from zenfed.data import partition
from zenfed.data.corpora import load_chatterbot
from zenfed.data.examples import Example, ParticipantData, TokenizedExample
from zenfed.data.formatting import tokenize_example
from zenfed.data.sources import load_source
from zenfed.errors import ZenfedError


def load_examples(cfg: DataConfig) -> list[Example]:
    """All examples named by the config: the corpus, then each source file."""
    examples: list[Example] = []
    if cfg.corpus == "chatterbot":
        examples += _cap(load_chatterbot(cfg.language, cfg.categories), cfg)
    for src in cfg.sources:
        examples += _cap(load_source(src), cfg)
    return examples


def load_validation(
    path: str, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_examples: int
) -> list[TokenizedExample]:
    """An operator's validation file (any format a data source takes), tokenized like the
    participants' data; the first ``max_examples`` conversations with a labelled token."""
    rows = load_source(SourceConfig(name="validation", path=path))
    tokenize = partial(tokenize_example, tokenizer, max_len=cfg.max_seq_len, train_on=cfg.train_on)
    out = [t for ex in rows if (t := tokenize(ex)).num_loss_tokens > 0][:max_examples]
    if not out:
        raise ZenfedError(
            f"validation file '{path}' has no usable conversation",
            fix="give gate.validation_file conversations with an answer to score",
        )
    return out


# (participant, every participant's name, a training example) -> an extra example or None
Poison = Callable[[str, Sequence[str], Example], Example | None]


def build_participants(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    poison: Poison | None = None,
) -> list[ParticipantData]:
    """Partition, tokenize and split the configured data into participants.

    ``poison`` (a simulated backdoor, ``zenfed.sim.attacks``) may add to a participant's
    training split a poisoned copy of each of its training examples; held-out splits
    stay clean."""
    examples = load_examples(cfg)
    rng = np.random.default_rng(seed)
    names, parts = _partition(cfg, examples, rng)
    out = []
    for name, idx in zip(names, parts, strict=True):
        tokenize = partial(
            tokenize_example, tokenizer, max_len=cfg.max_seq_len, train_on=cfg.train_on
        )
        # Truncation can cut every labelled token (a long prompt): nothing to learn from.
        toks = [(i, t) for i in idx if (t := tokenize(examples[i])).num_loss_tokens > 0]
        # Each holder's split depends on its own data and the seed only: the same whether
        # it is simulated among others or joins a deployment alone.
        own = np.random.default_rng([seed, zlib.crc32(name.encode())])
        train, held = split_heldout(toks, cfg.heldout_fraction, own, name)
        extra = [
            bad
            for i, _ in train
            if poison is not None and (bad := poison(name, names, examples[i])) is not None
        ]
        poisoned = [t for e in extra if (t := tokenize(e)).num_loss_tokens > 0]
        train_toks = [t for _, t in train] + poisoned
        meta = _common_meta([examples[i] for i in idx])
        out.append(
            ParticipantData(
                name=name,
                train=tuple(train_toks),
                heldout=tuple(t for _, t in held),
                meta=meta,
            )
        )
    return out


T = TypeVar("T")


MIN_EXAMPLES = 2  # a participant's least: one to train on, one held out


def split_heldout(
    items: list[T], fraction: float, rng: np.random.Generator, name: str
) -> tuple[list[T], list[T]]:
    """A seeded split: ceil(fraction * n) held out, the rest for training (both non-empty)."""
    if len(items) < MIN_EXAMPLES:
        raise ZenfedError(
            f"participant '{name}' has {len(items)} usable examples; it needs at least "
            f"{MIN_EXAMPLES}",
            fix="give it more data, raise data.max_seq_len, or leave it out",
        )
    order = rng.permutation(len(items))
    n_held = min(len(items) - 1, max(1, math.ceil(fraction * len(items))))
    return [items[i] for i in order[n_held:]], [items[i] for i in order[:n_held]]


def _partition(
    cfg: DataConfig, examples: list[Example], rng: np.random.Generator
) -> tuple[list[str], partition.Partition]:
    if cfg.partition == "natural":
        return partition.natural(_labels(cfg, examples))
    n = int(cfg.num_participants or 0)
    # every participant needs a training and a held-out example (split_heldout)
    alpha, least = cfg.dirichlet_alpha, MIN_EXAMPLES
    if cfg.partition == "dirichlet":
        parts = partition.dirichlet(_labels(cfg, examples), n, alpha, rng, min_items=least)
    elif cfg.partition == "quantity":
        parts = partition.quantity(len(examples), n, alpha, rng, min_items=least)
    else:
        parts = partition.iid(len(examples), n, rng, min_items=least)
    return [f"p{i:03d}" for i in range(n)], parts


def _labels(cfg: DataConfig, examples: list[Example]) -> list[str]:
    missing = next((e for e in examples if cfg.partition_field not in e.meta), None)
    if missing is not None:
        raise ZenfedError(
            f"data.partition_field '{cfg.partition_field}' is not a field of every example "
            f"(one has {sorted(missing.meta)})",
            fix="use 'source' for files, 'category' or 'language' for chatterbot",
        )
    return [e.meta[cfg.partition_field] for e in examples]


def _cap(examples: list[Example], cfg: DataConfig) -> list[Example]:
    if cfg.max_examples_per_source is None:
        return examples
    kept: dict[tuple[str, str], int] = {}
    out = []
    for e in examples:
        key = (e.meta.get("source", ""), e.meta.get("category", ""))
        if kept.get(key, 0) < cfg.max_examples_per_source:
            kept[key] = kept.get(key, 0) + 1
            out.append(e)
    return out


def _common_meta(examples: list[Example]) -> dict[str, str]:
    keys = set.intersection(*(set(e.meta) for e in examples)) if examples else set()
    return {
        k: examples[0].meta[k]
        for k in sorted(keys)
        if all(e.meta[k] == examples[0].meta[k] for e in examples)
    }
