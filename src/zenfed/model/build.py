"""The federation's model with its LoRA adapter, built the same way on every machine.

    model, tokenizer = adapter_model(cfg)

LoRA's A matrices start random: seeding the initialisation with the federation's seed
gives every party the same ones, which FFA-LoRA (A frozen, never sent) relies on.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from zenfed.config import FederationConfig
from zenfed.model.adapter import attach_lora
from zenfed.model.loading import load_base_model
from zenfed.protocol.adapter import AdapterSpec


def adapter_model(
    cfg: FederationConfig, spec: AdapterSpec | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load the base model and attach the federation's LoRA adapter, seeded (with
    ``spec``, a participant's shape of it, whose values come from the global version)."""
    base, tokenizer = load_base_model(cfg.model)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        model = attach_lora(base, cfg.lora, spec)
    return model, tokenizer
