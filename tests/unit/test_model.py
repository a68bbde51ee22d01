from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from zenfed.config import LoraConfig, ModelConfig
from zenfed.errors import ZenfedError
from zenfed.model import (
    attach_lora,
    export_adapter,
    export_merged,
    get_adapter_state,
    load_base_model,
    set_adapter_state,
)

TINY = ModelConfig(name="tiny-llama")


@pytest.fixture
def peft_model() -> Any:
    base, _ = load_base_model(TINY)
    torch.manual_seed(0)
    return attach_lora(base, LoraConfig(r=4, alpha=8))


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def test_adapter_state_holds_only_lora_tensors(peft_model: Any) -> None:
    state = get_adapter_state(peft_model)
    assert state and all(("lora_A" in k or "lora_B" in k) for k in state)
    # 2 layers x 4 target modules x (A, B)
    assert len(state) == 16
    assert all(".default." not in k for k in state)


def test_set_then_get_round_trips(peft_model: Any) -> None:
    new = _perturbed(get_adapter_state(peft_model))
    set_adapter_state(peft_model, new)
    for k, v in get_adapter_state(peft_model).items():
        torch.testing.assert_close(v, new[k])


def test_set_rejects_wrong_names_and_shapes_and_changes_nothing(peft_model: Any) -> None:
    before = get_adapter_state(peft_model)
    bad = dict(_perturbed(before))
    name = next(iter(bad))
    bad[name] = torch.zeros(3, 3)
    with pytest.raises(ZenfedError, match="has shape"):
        set_adapter_state(peft_model, bad)
    extra = {**before, "evil.weight": torch.zeros(1)}
    with pytest.raises(ZenfedError, match="unknown tensor 'evil.weight'"):
        set_adapter_state(peft_model, extra)
    for k, v in get_adapter_state(peft_model).items():
        torch.testing.assert_close(v, before[k])


def test_exported_adapter_loads_in_peft_with_the_same_logits(
    peft_model: Any, tmp_path: Path
) -> None:
    state = _perturbed(get_adapter_state(peft_model))
    export_adapter(peft_model, state, tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        fresh, _ = load_base_model(TINY)
        loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_merged_export_loads_with_automodel_with_the_same_logits(
    peft_model: Any, tokenizer: Any, tmp_path: Path
) -> None:
    state = _perturbed(get_adapter_state(peft_model))
    export_merged(peft_model, state, tokenizer, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 200, 3000]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_local_folder_loads(peft_model: Any, tokenizer: Any, tmp_path: Path) -> None:
    export_merged(peft_model, get_adapter_state(peft_model), tokenizer, tmp_path / "m")
    model, tok = load_base_model(ModelConfig(name=str(tmp_path / "m")))
    assert model.config.hidden_size == 64 and tok.pad_token is not None


def test_unknown_model_and_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ZenfedError, match="unknown model 'gpt-17'"):
        load_base_model(ModelConfig(name="gpt-17"))
    with pytest.raises(ZenfedError, match="has no config.json"):
        load_base_model(ModelConfig(name=str(tmp_path)))


def test_wrong_target_modules_are_named() -> None:
    base, _ = load_base_model(TINY)
    with pytest.raises(ZenfedError, match=r"\['query'\] are not modules"):
        attach_lora(base, LoraConfig(target_modules=("q_proj", "query")))


def test_unreachable_or_unknown_hub_id_is_a_clear_error() -> None:
    # Here the hub is unreachable; elsewhere this id does not exist: either way one error.
    with pytest.raises(ZenfedError, match="could not load 'zenfed-test/no-such-model'"):
        load_base_model(ModelConfig(name="zenfed-test/no-such-model"))


def test_ffa_lora_shares_only_b_and_exports_the_frozen_a(tmp_path: Path) -> None:
    base, _ = load_base_model(TINY)
    torch.manual_seed(0)
    model = attach_lora(base, LoraConfig(r=4, alpha=8, freeze_a=True))
    state = get_adapter_state(model)
    assert len(state) == 8 and all("lora_B" in k for k in state)  # half the tensors
    frozen_a = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    assert frozen_a and not any(
        p.requires_grad for n, p in model.named_parameters() if "lora_A" in n
    )
    trained = _perturbed(state)
    export_adapter(model, trained, tmp_path / "ffa")
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    reloaded_base, _ = load_base_model(TINY)
    loaded = PeftModel.from_pretrained(reloaded_base, tmp_path / "ffa")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)
