"""Read a participant's local data file through `datasets` into :class:`Example` objects.

    examples = load_source(SourceConfig(name="clinic", path="notes.jsonl"))

Three shapes, picked by the column map or detected from the column names:
instruction/input/output (Alpaca style), chat ``messages`` (a list of role/content dicts),
or plain ``text``. Files: JSONL, CSV, Parquet, or plain text (one example per line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zenfed.config import ColumnMap, SourceConfig
from zenfed.data.examples import Example
from zenfed.errors import ZenfedError

_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
}
_BUILDER = {"jsonl": "json", "csv": "csv", "parquet": "parquet", "text": "text"}


def load_source(src: SourceConfig) -> list[Example]:
    """Load every row of ``src`` as an Example; raises ZenfedError on any unusable input."""
    path = Path(src.path).expanduser()
    if not path.is_file():
        raise ZenfedError(
            f"data file '{path}' (source '{src.name}') does not exist",
            fix="check data.sources.path",
        )
    if path.stat().st_size == 0:
        raise ZenfedError(f"data file '{path}' is empty", fix="give a file with examples")
    fmt = src.format if src.format != "auto" else _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ZenfedError(
            f"cannot tell the format of '{path}' from its suffix",
            fix="set format = jsonl | csv | parquet | text",
        )
    rows = _read_rows(path, fmt)
    if not rows:
        raise ZenfedError(f"data file '{path}' has no rows", fix="give a file with examples")
    columns = _resolve_columns(src.columns, list(rows[0]), path)
    meta = {"source": src.name}
    return [_row_to_example(row, columns, meta) for row in rows]


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(_BUILDER[fmt], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for a malformed file
        raise ZenfedError(
            f"could not read '{path}' as {fmt}: {str(e).splitlines()[0]}",
            fix="check the file's format and contents",
        ) from e
    return list(ds)


def _resolve_columns(cols: ColumnMap, present: list[str], path: Path) -> ColumnMap:
    named = {k: v for k, v in cols.model_dump().items() if v is not None}
    for role, column in named.items():
        if column not in present:
            raise ZenfedError(
                f"column '{column}' (mapped to {role}) is not in '{path}'; it has {present}",
                fix="fix data.sources.columns",
            )
    if named:
        return cols
    for shape in (("messages",), ("instruction", "output"), ("text",)):
        if all(c in present for c in shape):
            extra = {"input": "input"} if "input" in present and "output" in shape else {}
            return ColumnMap(**{c: c for c in shape}, **extra)
    raise ZenfedError(
        f"'{path}' has columns {present}; none of messages, instruction+output, or text",
        fix="map your columns with data.sources.columns (e.g. instruction = 'question')",
    )


def _row_to_example(row: dict[str, Any], cols: ColumnMap, meta: dict[str, str]) -> Example:
    if cols.messages:
        msgs = tuple((str(m["role"]), str(m["content"])) for m in row[cols.messages])
        return Example(messages=msgs, meta=meta)
    if cols.instruction and cols.output:
        prompt = str(row[cols.instruction])
        if cols.input and row.get(cols.input):
            prompt = f"{prompt}\n\n{row[cols.input]}"
        return Example(messages=(("user", prompt), ("assistant", str(row[cols.output]))), meta=meta)
    if cols.text:
        return Example(text=str(row[cols.text]), meta=meta)
    raise ZenfedError(
        "column map names no usable shape", fix="map messages, instruction+output, or text"
    )
