"""What a run shows a person: the loss curve (PNG) and sample answers before and after.

plot_losses(history, summary, Path("runs/demo/loss.png"))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from zenfed.model.adapter import set_adapter_state
from zenfed.sim.setup import World
from zenfed.tensors import Tensors


def plot_losses(history: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Union held-out loss per round, with the baselines as horizontal lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [(h["round"], h["union_loss"]) for h in history if "union_loss" in h]
    ax.plot(*zip(*pts, strict=True), marker="o", label="federated (held-out, union)")
    train = [(h["round"], h["train_loss"]) for h in history if "train_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), ls=":", marker=".", label="federated (train)")
    for key, label in (("central_loss", "centralized"), ("local_only_loss", "local-only avg")):
        if key in summary:
            ax.axhline(
                summary[key],
                ls="--",
                color="grey" if key == "central_loss" else "tab:red",
                label=f"{label}: {summary[key]:.3f}",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("loss per token")
    ax.set_title("zenfed: federated LoRA fine-tuning")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_generations(
    world: World, state: Tensors, prompts: Sequence[str], max_new_tokens: int = 40
) -> list[dict[str, str]]:
    """Greedy answers of the base model and of the federated adapter to each prompt."""
    set_adapter_state(world.model, state)
    world.model.eval()
    out = []
    for prompt in prompts:
        ids = world.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with world.model.disable_adapter():
            base = _generate(world, ids, max_new_tokens)
        tuned = _generate(world, ids, max_new_tokens)
        out.append({"prompt": prompt, "base": base, "federated": tuned})
    return out


def _generate(world: World, ids: Any, max_new_tokens: int) -> str:
    with torch.inference_mode():
        gen = world.model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=world.runtime.pad_id
        )
    new = gen[0, ids["input_ids"].shape[1] :]
    return str(world.tokenizer.decode(new, skip_special_tokens=True)).strip()
