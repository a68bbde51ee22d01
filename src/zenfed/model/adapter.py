"""LoRA adapters through PEFT: attach, get/set the adapter-only state, export.

    peft_model = attach_lora(model, LoraConfig(r=8, alpha=16))
    state = get_adapter_state(peft_model)           # {name: tensor}, the only thing shared
    set_adapter_state(peft_model, state)            # names and shapes checked
    export_adapter(peft_model, state, "out/adapter")  # PeftModel.from_pretrained loads it

Names follow PEFT's adapter state dict (``get_peft_model_state_dict``): the parameter name
without the adapter's own name, e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from zenfed.config import LoraConfig
from zenfed.errors import ZenfedError
from zenfed.protocol.adapter import AdapterSpec

AdapterState = dict[str, torch.Tensor]
_ADAPTER = "default"


def attach_lora(
    model: PreTrainedModel, cfg: LoraConfig, spec: AdapterSpec | None = None
) -> PeftModel:
    """Wrap ``model`` with a trainable LoRA adapter; the base weights are frozen. With
    ``spec``, the participant's shape of it: rank k with alpha scaled by k / r (so its
    product is exactly that part of the federation's adapter), on ``spec.layers`` only."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ZenfedError(
            f"lora.target_modules {missing} are not modules of this model",
            fix=f"choose among e.g. {sorted(n for n in present if n.endswith('_proj'))}",
        )
    spec = spec or AdapterSpec()
    rank = spec.rank or cfg.r
    alpha = cfg.alpha * rank / cfg.r  # alpha / r, LoRA's scale, stays the federation's
    peft_cfg = PeftLoraConfig(
        r=rank,
        lora_alpha=cfg.alpha if rank == cfg.r else alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=list(spec.layers) if spec.layers is not None else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    if cfg.freeze_a:  # FFA-LoRA: A keeps its (seeded) init and is neither trained nor sent
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return peft_model


def adapter_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """The live trainable adapter parameters, keyed by their adapter-state name."""
    suffix = f".{_ADAPTER}"
    return {
        name.replace(f"{suffix}.", "."): p
        for name, p in model.named_parameters()
        if p.requires_grad and suffix in name
    }


def get_adapter_state(model: PeftModel) -> AdapterState:
    """A detached copy of the adapter's tensors (float32, CPU)."""
    return {
        n: p.detach().to("cpu", torch.float32).clone() for n, p in adapter_parameters(model).items()
    }


def set_adapter_state(model: PeftModel, state: AdapterState) -> None:
    """Load ``state`` into the adapter in place; names and shapes must match exactly."""
    params = adapter_parameters(model)
    check_state_matches(state, {n: tuple(p.shape) for n, p in params.items()})
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def check_state_matches(state: AdapterState, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise a ZenfedError naming the first unknown, missing or misshapen tensor."""
    unknown = sorted(set(state) - set(shapes))
    missing = sorted(set(shapes) - set(state))
    if unknown or missing:
        what = f"unknown tensor '{unknown[0]}'" if unknown else f"missing tensor '{missing[0]}'"
        raise ZenfedError(
            f"adapter state does not match the model: {what}",
            fix="use the same base model and lora settings on both sides",
        )
    for name, shape in shapes.items():
        if tuple(state[name].shape) != shape:
            raise ZenfedError(
                f"tensor '{name}' has shape {tuple(state[name].shape)}, expected {shape}",
                fix="use the same base model and lora settings on both sides",
            )


def export_adapter(model: PeftModel, state: AdapterState, out_dir: str | Path) -> Path:
    """Write a PEFT adapter folder (adapter_config.json + safetensors) holding ``state``."""
    set_adapter_state(model, state)
    return _atomic_dir(Path(out_dir), lambda tmp: model.save_pretrained(str(tmp)))


def export_merged(
    model: PeftModel, state: AdapterState, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Write a plain transformers model folder with ``state`` merged into the base weights."""
    set_adapter_state(model, state)
    merged = copy.deepcopy(model).merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(Path(out_dir), write)


def _atomic_dir(out: Path, write: Callable[[Path], None]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
