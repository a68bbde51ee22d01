"""Base models and LoRA adapters.

model, tokenizer = load_base_model(ModelConfig(name="smollm2-135m-instruct"))
peft_model = attach_lora(model, LoraConfig(r=8))
state = get_adapter_state(peft_model)      # adapter-only named tensors
"""

from zenfed.model.adapter import (
    AdapterState,
    adapter_parameters,
    attach_lora,
    export_adapter,
    export_merged,
    get_adapter_state,
    set_adapter_state,
)
from zenfed.model.loading import BUILTIN_MODELS, load_base_model, load_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "AdapterState",
    "adapter_parameters",
    "attach_lora",
    "export_adapter",
    "export_merged",
    "get_adapter_state",
    "load_base_model",
    "load_tokenizer",
    "set_adapter_state",
]
