"""Built-in corpora. ``chatterbot``: multi-domain dialogs from the PyPI package
``chatterbot-corpus``, one YAML file per category per language.

    examples = load_chatterbot("english", ["ai", "coding"])

Each conversation becomes a chat that alternates user and assistant turns; its category
and language go into ``meta``, so categories (or languages) are natural participants.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from zenfed.data.examples import Example
from zenfed.errors import ZenfedError


def chatterbot_root() -> Path:
    """The folder of chatterbot-corpus's YAML files (one subfolder per language)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise ZenfedError(
            "the chatterbot corpus needs the package 'chatterbot-corpus'",
            fix="pip install chatterbot-corpus",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_chatterbot(language: str, categories: tuple[str, ...] | list[str]) -> list[Example]:
    """Every conversation of the given categories, in file order."""
    folder = chatterbot_root() / language
    if not folder.is_dir():
        langs = sorted(p.name for p in chatterbot_root().iterdir() if p.is_dir())
        raise ZenfedError(f"chatterbot has no language '{language}'", fix=f"one of {langs}")
    examples: list[Example] = []
    for cat in categories:
        path = folder / f"{cat}.yml"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.yml"))
            raise ZenfedError(
                f"chatterbot has no category '{cat}' in {language}", fix=f"one of {known}"
            )
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        meta = {"category": cat, "language": language, "source": "chatterbot"}
        for conv in doc.get("conversations") or []:
            turns = [str(t) for t in conv if t is not None and str(t).strip()]
            if len(turns) < 2:
                continue
            roles = ("user", "assistant")
            msgs = tuple((roles[i % 2], t) for i, t in enumerate(turns))
            examples.append(Example(messages=msgs, meta=meta))
    return examples
