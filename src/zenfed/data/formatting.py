"""Turn examples into token ids and labels with the model's chat template.

    tok_ex = tokenize_example(tokenizer, example, max_len=64, train_on="assistant")

For chats, ``train_on="assistant"`` takes the loss only on assistant turns (their content
and end-of-turn token; never the prompt, the system text, or the role header);
``"all"`` takes it on every token. Plain text always takes it on every token.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from zenfed.data.examples import IGNORE_INDEX, Example, TokenizedExample


def tokenize_example(
    tok: PreTrainedTokenizerBase,
    ex: Example,
    max_len: int,
    train_on: Literal["assistant", "all"] = "assistant",
) -> TokenizedExample:
    """Token ids and labels of ``ex``, truncated to ``max_len`` tokens."""
    if ex.text is not None:
        ids = list(tok(ex.text, add_special_tokens=True)["input_ids"])[:max_len]
        return TokenizedExample(tuple(ids), tuple(ids))
    ids, labels = _chat_ids_and_labels(tok, ex.messages)
    if train_on == "all":
        labels = list(ids)
    return TokenizedExample(tuple(ids[:max_len]), tuple(labels[:max_len]))


def _render(tok: PreTrainedTokenizerBase, msgs: list[dict[str, str]], gen: bool) -> list[int]:
    out: Any = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    ids = out["input_ids"] if hasattr(out, "keys") else out  # a BatchEncoding in newer versions
    return [int(i) for i in ids]


def _chat_ids_and_labels(
    tok: PreTrainedTokenizerBase, messages: tuple[tuple[str, str], ...]
) -> tuple[list[int], list[int]]:
    # Render growing prefixes: the template renders a conversation as the concatenation of
    # its turns, so each assistant turn's tokens are the difference between two renders.
    msgs = [{"role": r, "content": c} for r, c in messages]
    ids: list[int] = []
    labels: list[int] = []
    for k, msg in enumerate(msgs):
        full = _render(tok, msgs[: k + 1], gen=False)
        if msg["role"] == "assistant":
            header = _render(tok, msgs[:k], gen=True)  # ends with "<|im_start|>assistant\n"
            labels += [IGNORE_INDEX] * (len(header) - len(ids)) + full[len(header) :]
        else:
            labels += [IGNORE_INDEX] * (len(full) - len(ids))
        ids = full
    return ids, labels[: len(ids)]
