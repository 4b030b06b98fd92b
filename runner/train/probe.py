"""Check a trainer config against the model folder and the data before anything on the host changes.

Parses the config as the trainer does, loads the model's config and tokenizer (no weights), resolves the
causal-LM class, checks that QLoRA and the chosen attention can run here, reads the dataset, checks every
record's shape (a sample of a large one), and tokenizes some: at least one must train a token within
max_seq_len. Nothing is downloaded: a model or dataset not on this host yet is checked when the trainer loads it.

Run: python -m runner.train.probe < CONFIG.json   (prints one JSON line; exit 0 ok, 3 refused)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, parse_config, sources
from .data import (
    count_records,
    data_files,
    has_response,
    held_out_count,
    record_format,
    sample_records,
    tokenize_records,
)
from .exits import EXIT_REFUSED

FULL_CHECK_BYTES = 64 * 2**20  # datasets up to this size have every record checked; larger ones a sample
SAMPLE_RECORDS = 2000  # per file, for larger datasets
TOKENIZED_RECORDS = 200  # tokenized to find trained tokens within max_seq_len


def probe(cfg: TrainConfig) -> list[str]:
    """Notes on what was checked; raises ConfigError naming the problem and the fix."""
    notes: list[str] = []
    tokenizer = None
    model_config = load_model_config(cfg)
    if model_config is None:
        notes.append(f"model {cfg.model} is not on this host yet: checked when the trainer loads it")
    else:
        notes.append(f"model: {check_architecture(cfg, model_config)}")
        check_rank(cfg, model_config)
        tokenizer = load_tokenizer(cfg)
    check_method(cfg)
    check_attention(cfg)
    notes.extend(check_kernels(cfg))
    for source in sources(cfg):
        if not Path(source.path).exists():
            notes.append(f"dataset {source.path} is not on this host yet: checked when the trainer loads it")
    if any(Path(source.path).exists() for source in sources(cfg)):
        notes.append(f"data: {check_data(cfg, tokenizer)}")
    if cfg.eval is not None:
        notes.append(f"eval: {check_eval(cfg, tokenizer)}")
    return notes


def check_eval(cfg: TrainConfig, tokenizer: Any | None) -> str:
    """The eval section against what is on this host: a separate file read as training data is, or the split
    against the records the dataset holds."""
    ev = cfg.eval
    assert ev is not None
    if ev.dataset is not None:
        if not Path(ev.dataset).exists():
            return f"{ev.dataset} is not on this host yet: checked when the trainer loads it"
        try:
            return check_data(dataclasses.replace(cfg, dataset=ev.dataset), tokenizer)
        except ConfigError as err:
            raise ConfigError(f"eval.dataset: {err}") from None
    paths = [source.path for source in sources(cfg)]
    if not all(Path(path).exists() for path in paths):
        return f"split {ev.split}: checked when the trainer loads the dataset"
    total = sum(count_records(path) for path in paths)
    return f"{held_out_count(ev.split, total)} of {total} records held out"


def load_model_config(cfg: TrainConfig) -> Any | None:
    """The model's config (a local folder, or a hub id already in the cache); None when it is not here."""
    from transformers import AutoConfig

    local = Path(cfg.model).is_dir()
    try:
        return AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code,
                                          local_files_only=not local)
    except (ValueError, KeyError) as err:  # an unknown model_type, or remote code not allowed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model {cfg.model}: transformers cannot read its config ({first})") from None
    except OSError:
        if local:
            raise ConfigError(f"model folder {cfg.model} has no readable config.json") from None
        return None


def check_architecture(cfg: TrainConfig, config: Any) -> str:
    """The causal-LM class transformers would build (resolved, not instantiated)."""
    import transformers
    from transformers import AutoModelForCausalLM

    auto_map = getattr(config, "auto_map", None) or {}
    if cfg.trust_remote_code and "AutoModelForCausalLM" in auto_map:
        return f"{config.model_type} (remote code {auto_map['AutoModelForCausalLM']})"
    mapping = AutoModelForCausalLM._model_mapping
    if type(config) not in mapping:
        raise ConfigError(f"model {cfg.model}: transformers {transformers.__version__} has no causal-LM class for "
                          f"model type {config.model_type!r}; use a decoder model such as llama, mistral or qwen2")
    found = mapping[type(config)]
    names = getattr(config, "architectures", None) or []
    classes = found if isinstance(found, tuple | list) else (found,)
    chosen = next((c for c in classes if c.__name__ in names), classes[0])
    return f"{config.model_type} ({chosen.__name__})"


def check_rank(cfg: TrainConfig, config: Any) -> None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    if isinstance(hidden, int) and cfg.lora.rank > hidden:
        raise ConfigError(f"lora.rank {cfg.lora.rank} is larger than the model's hidden size {hidden}; "
                          "use a smaller rank (8-64 is usual)")


def load_tokenizer(cfg: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model {cfg.model}: its tokenizer does not load ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_method(cfg: TrainConfig) -> None:
    if cfg.method != "qlora":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("method qlora needs bitsandbytes, which this host's training venv lacks; install "
                          "'gpu-runner[qlora]' there (runner setup), or use method: lora") from None
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("method qlora needs a CUDA GPU (4-bit weights) and this host has none; use method: lora")


def check_attention(cfg: TrainConfig) -> None:
    attention = cfg.train.attention
    if attention == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ConfigError("train.attention flash_attention_2 needs the flash-attn package and a CUDA GPU; "
                              "use auto (varlen, built into torch, on CUDA)")
    elif attention == "varlen":
        import torch

        from .attention import varlen_kernel_available

        if not torch.cuda.is_available() or not varlen_kernel_available(torch.device("cuda", 0)):
            raise ConfigError("train.attention varlen needs a CUDA GPU of compute capability 8.0 or newer; "
                              "use auto (it picks sdpa elsewhere)")


def check_kernels(cfg: TrainConfig) -> list[str]:
    """Compiled layers and Liger's kernels need Triton to build on a CUDA host (a C compiler, Python's headers):
    refused when asked for, a note when `auto` will run the layers eagerly for want of them."""
    import torch

    from .model import NO_TRITON_BUILD, triton_build_missing

    missing = triton_build_missing() if torch.cuda.is_available() else None
    if missing is None:
        return []
    for what in ("compile", "liger"):
        if getattr(cfg.train, what) is True:
            raise ConfigError(NO_TRITON_BUILD.format(what=f"train.{what}", missing=missing))
    return [f"kernels: this host lacks {missing}, so the layers run eagerly; install gcc and python3-dev for "
            "compiled layers"]


def check_data(cfg: TrainConfig, tokenizer: Any | None) -> str:
    """Every record's shape (a sample of a large dataset), and some tokenized: one line on what was found; of a mix,
    each source here in its own format, a line each joined by ' | '."""
    if isinstance(cfg.dataset, str):
        return _check_source(cfg, tokenizer)
    return " | ".join(
        f"{source.path} (weight {source.weight:g}): "
        + _check_source(dataclasses.replace(cfg, dataset=source.path, format=source.format or cfg.format), tokenizer)
        for source in cfg.dataset if Path(source.path).exists())


def _check_source(cfg: TrainConfig, tokenizer: Any | None) -> str:
    size = sum(p.stat().st_size for p in data_files(cfg.dataset))
    records = sample_records(cfg.dataset, None if size <= FULL_CHECK_BYTES else SAMPLE_RECORDS)
    if not records:
        raise ConfigError(f"dataset {cfg.dataset} is empty")
    formats = [record_format(record, cfg.format) for record in records]
    with_response = [r for r, fmt in zip(records, formats, strict=True) if has_response(r, fmt)]
    checked = f"{len(records)} records checked" if size <= FULL_CHECK_BYTES else f"a sample of {len(records)} records"
    found = f"{'/'.join(sorted(set(formats)))}, {checked}, {len(records) - len(with_response)} without a response"
    if not with_response:
        raise ConfigError(f"dataset {cfg.dataset}: no record has an assistant turn (or response) to train on "
                          f"({checked})")
    if tokenizer is None:
        return found
    try:
        _, counts = tokenize_records(with_response[:TOKENIZED_RECORDS], cfg.format, tokenizer, cfg.train.max_seq_len)
    except ConfigError as err:
        raise ConfigError(f"dataset {cfg.dataset}: {err}") from None
    return f"{found}; {counts.examples} of {counts.records} tokenized records train within max_seq_len"


def main() -> int:
    try:
        notes = probe(parse_config(json.loads(sys.stdin.read())))
    except ConfigError as err:
        print(json.dumps({"ok": False, "error": str(err)}))
        return EXIT_REFUSED
    print(json.dumps({"ok": True, "notes": notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
