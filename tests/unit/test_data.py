import json
import math
from pathlib import Path
from typing import Any

import pytest

from zenfed.config import ColumnMap, DataConfig, SourceConfig
from zenfed.data import IGNORE_INDEX, build_participants, tokenize_example
from zenfed.data.corpora import load_chatterbot
from zenfed.data.sources import load_source
from zenfed.errors import ZenfedError

ROWS = [{"question": f"What is {i}?", "answer": f"It is {i}."} for i in range(6)]


def _write(tmp_path: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        p = tmp_path / "d.csv"
        p.write_text(
            "question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in ROWS)
        )
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), p)
    else:
        p = tmp_path / "d.txt"
        p.write_text("".join(r["answer"] + "\n" for r in ROWS))
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_instruction_files_load_through_the_column_map(tmp_path: Path, fmt: str) -> None:
    cols = ColumnMap(instruction="question", output="answer")
    exs = load_source(SourceConfig(name="s", path=str(_write(tmp_path, fmt)), columns=cols))
    assert len(exs) == 6
    assert exs[2].messages == (("user", "What is 2?"), ("assistant", "It is 2."))
    assert exs[0].meta["source"] == "s"


def test_plain_text_file_gives_one_example_per_line(tmp_path: Path) -> None:
    exs = load_source(SourceConfig(name="t", path=str(_write(tmp_path, "text"))))
    assert [e.text for e in exs] == [r["answer"] for r in ROWS]


def test_chat_messages_are_detected(tmp_path: Path) -> None:
    p = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    p.write_text(json.dumps({"messages": msgs}) + "\n")
    (ex,) = load_source(SourceConfig(name="c", path=str(p)))
    assert ex.messages == (("user", "hi"), ("assistant", "hello"))


def test_wrong_column_names_say_what_the_file_has(tmp_path: Path) -> None:
    src = SourceConfig(
        name="s",
        path=str(_write(tmp_path, "jsonl")),
        columns=ColumnMap(instruction="prompt", output="answer"),
    )
    with pytest.raises(ZenfedError, match=r"column 'prompt'.*has \['question', 'answer'\]"):
        load_source(src)
    with pytest.raises(ZenfedError, match="none of messages"):
        load_source(SourceConfig(name="s", path=str(_write(tmp_path, "jsonl"))))


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ZenfedError, match="does not exist"):
        load_source(SourceConfig(name="s", path=str(tmp_path / "nope.jsonl")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ZenfedError, match="is empty"):
        load_source(SourceConfig(name="s", path=str(empty)))


def test_loss_is_only_on_assistant_tokens(tokenizer: Any) -> None:
    from zenfed.data import Example

    ex = Example(
        messages=(
            ("user", "Ping?"),
            ("assistant", "Pong."),
            ("user", "Again?"),
            ("assistant", "Pong again."),
        )
    )
    t = tokenize_example(tokenizer, ex, max_len=512, train_on="assistant")
    assert len(t.input_ids) == len(t.labels)
    learned = tokenizer.decode(
        [i for i, lab in zip(t.input_ids, t.labels, strict=True) if lab != IGNORE_INDEX]
    )
    assert "Pong." in learned and "Pong again." in learned
    assert "Ping" not in learned and "Again" not in learned and "assistant" not in learned
    full = tokenize_example(tokenizer, ex, max_len=512, train_on="all")
    assert full.labels == full.input_ids


def test_truncation_to_max_len(tokenizer: Any) -> None:
    from zenfed.data import Example

    ex = Example(messages=(("user", "word " * 100), ("assistant", "ok")))
    t = tokenize_example(tokenizer, ex, max_len=16)
    assert len(t.input_ids) == len(t.labels) == 16


def test_chatterbot_categories_become_participants_with_heldout(tokenizer: Any) -> None:
    cfg = DataConfig(categories=("ai", "emotion"), max_seq_len=64)
    parts = build_participants(cfg, tokenizer, seed=0)
    assert [p.name for p in parts] == ["ai", "emotion"]
    n_ai = len(load_chatterbot("english", ["ai"]))
    assert len(parts[0].train) + len(parts[0].heldout) == n_ai
    assert len(parts[0].heldout) == math.ceil(0.2 * n_ai)


def test_unknown_chatterbot_category_lists_the_known_ones() -> None:
    with pytest.raises(ZenfedError, match="no category 'cooking'.*'coding'"):
        load_chatterbot("english", ["cooking"])


def test_participant_with_too_few_examples_is_named(tmp_path: Path, tokenizer: Any) -> None:
    p = tmp_path / "one.jsonl"
    p.write_text(json.dumps({"text": "only one"}) + "\n")
    cfg = DataConfig(
        corpus=None,
        sources=(SourceConfig(name="tiny-clinic", path=str(p)),),
        partition_field="source",
    )
    with pytest.raises(ZenfedError, match="participant 'tiny-clinic' has 1 usable examples"):
        build_participants(cfg, tokenizer, seed=0)


def test_dirichlet_partition_of_files_names_participants(tmp_path: Path, tokenizer: Any) -> None:
    cols = ColumnMap(instruction="question", output="answer")
    srcs = []
    for i in range(2):
        (tmp_path / f"d{i}").mkdir()
        path = str(_write(tmp_path / f"d{i}", "jsonl"))
        srcs.append(SourceConfig(name=f"s{i}", path=path, columns=cols))
    cfg = DataConfig(
        corpus=None,
        sources=tuple(srcs),
        partition="dirichlet",
        partition_field="source",
        num_participants=3,
        dirichlet_alpha=10.0,
    )
    parts = build_participants(cfg, tokenizer, seed=1)
    assert [p.name for p in parts] == ["p000", "p001", "p002"]
    assert sum(len(p.train) + len(p.heldout) for p in parts) == 12


def test_examples_truncated_to_no_labelled_tokens_are_dropped(tokenizer: Any) -> None:
    short = build_participants(DataConfig(categories=("ai",), max_seq_len=36), tokenizer, 0)[0]
    assert all(t.num_loss_tokens > 0 for t in (*short.train, *short.heldout))
    full = build_participants(DataConfig(categories=("ai",), max_seq_len=256), tokenizer, 0)[0]
    assert len(short.train) + len(short.heldout) < len(full.train) + len(full.heldout)
    with pytest.raises(ZenfedError, match="participant 'ai' has 0 usable examples.*max_seq_len"):
        build_participants(DataConfig(categories=("ai",), max_seq_len=30), tokenizer, 0)
