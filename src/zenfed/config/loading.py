"""Loading a config: TOML (and ``--set`` overrides) in, a validated ``FederationConfig``
out, or one line naming the wrong key and its fix (a close spelling is suggested).
Re-exported by ``zenfed.config``."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from zenfed.config.compress import CODEC_SPECS
from zenfed.config.federation import FederationConfig
from zenfed.config.sampling import SAMPLING_SPECS
from zenfed.errors import ZenfedError


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FederationConfig:
    """Read a TOML file into a validated :class:`FederationConfig`.

    ``overrides`` maps dotted keys (``"train.lr"``) to values and is applied before
    validation, so an override is checked like a key in the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ZenfedError(f"config file '{p}' does not exist", fix="pass an existing TOML file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ZenfedError(f"config file '{p}' is not valid TOML: {e}", fix="fix the syntax") from e
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, origin=str(p))


def parse_config(raw: dict[str, Any], origin: str = "config") -> FederationConfig:
    """Validate a plain dict (as TOML would give) into a :class:`FederationConfig`."""
    try:
        return FederationConfig.model_validate(_lists_to_tuples(raw))
    except ValidationError as e:
        raise ZenfedError(f"{origin}: {_describe(e.errors()[0])}", fix=_fix(e.errors()[0])) from e


def _lists_to_tuples(value: Any) -> Any:
    # TOML arrays arrive as lists; the frozen config stores tuples (strict mode needs it).
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


# The members of tagged unions (codec specs, sampling specs) by their tags.
TAGGED: dict[str, type[BaseModel]] = {**CODEC_SPECS, **SAMPLING_SPECS}


def _describe(err: Any) -> str:
    key = ".".join(str(x) for x in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"] == "union_tag_invalid":
        return (
            f"unknown {err['ctx']['discriminator'].strip(chr(39))} {err['ctx']['tag']!r} in '{key}'"
        )
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"key '{key}': {err['msg']} (got {err.get('input')!r})"


def _fix(err: Any) -> str:
    if err["type"] == "union_tag_invalid":
        return f"one of {err['ctx']['expected_tags']}"
    if err["type"] != "extra_forbidden":
        return "see the field's type and allowed values in zenfed/config.py"
    *parents, leaf = [str(x) for x in err["loc"]]
    model: Any = FederationConfig
    for name in parents:
        if name.isdigit():
            continue
        if name in TAGGED:  # a tagged union member: pydantic puts the tag in the path
            model = TAGGED[name]
            continue
        if getattr(model, "__origin__", None) is dict:  # a table of tables: its values'
            model = model.__args__[-1]
            continue
        field = getattr(model, "model_fields", {}).get(name)
        ann = getattr(field, "annotation", None)
        inner = getattr(ann, "__args__", (ann,))[0]
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else ann
    known = sorted(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(leaf, known, n=1)
    return f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
