"""Participants' private data: loading, chat formatting, built-in corpora, partitioning.

participants = build_participants(cfg.data, tokenizer, seed=0)
"""

from zenfed.data.examples import IGNORE_INDEX, Example, ParticipantData, TokenizedExample
from zenfed.data.federated import build_participants, load_examples, split_heldout
from zenfed.data.formatting import tokenize_example

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "ParticipantData",
    "TokenizedExample",
    "build_participants",
    "load_examples",
    "split_heldout",
    "tokenize_example",
]
