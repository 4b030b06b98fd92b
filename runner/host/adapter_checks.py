"""A session's LoRA adapter, checked before vLLM sees it: its rank against what vLLM accepts, its weights
(safetensors headers), their shapes against the served model, and the base it was trained on."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from runner.host import session_files as files
from runner.host.serve_errors import ServeRefused

ALLOWED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig accepts only these
# Fields that must agree for an adapter trained on one copy of a model to fit another copy
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class Adapter:
    path: Path
    rank: int
    max_lora_rank: int | None  # None: too large to serve unmerged
    base: str  # the model it was trained on, as a host path or HF id
    modules_to_save: tuple[str, ...]


def lora_rank(config: dict) -> int:
    """The largest rank in the adapter: r, and every rank_pattern entry."""
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def max_lora_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank vLLM allows that holds `rank`; None when none does."""
    return next((allowed for allowed in ALLOWED_LORA_RANKS if allowed >= rank), None)


def safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}; raises ValueError for a truncated or garbled file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise ValueError(f"header of {header_len} bytes in a {size}-byte file")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data = size - 8 - header_len
    for name, tensor in header.items():
        if tensor["data_offsets"][1] > data:
            raise ValueError(f"tensor {name} ends past the end of the file")
    return header


def check_safetensors(path: Path) -> dict[str, dict]:
    """The header parses and every tensor lies inside the file; returns the header."""
    try:
        return safetensors_header(path)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as err:
        raise ServeRefused(f"{path} is corrupt ({err}); train again or copy the adapter again") from None


def model_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Every weight's shape in a local safetensors model (headers only); {} when it is not local."""
    shapes: dict[str, list[int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")) if model_dir.is_dir() else []:
        try:
            shapes.update({name: t["shape"] for name, t in safetensors_header(file).items()})
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
            continue
    return shapes


def check_shapes(adapter_weights: Path, served_model: str) -> None:
    """lora_A is [r, in] and lora_B is [out, r] of the served model's [out, in] weight, module by module.

    vLLM loads an adapter whose shapes do not fit and serves it anyway, so this is ours to check.
    """
    base = model_shapes(Path(served_model))
    if not base:
        return
    for name, tensor in safetensors_header(adapter_weights).items():
        for part, axis in ((".lora_A.weight", 1), (".lora_B.weight", 0)):
            if not name.endswith(part):
                continue
            module = name.removeprefix("base_model.model.").removesuffix(part) + ".weight"
            expected = base.get(module)
            if expected is None:
                raise ServeRefused(f"the adapter adapts {module}, which the served model {served_model} does not "
                                   "have: it was trained on another model; serve it with --merge")
            if tensor["shape"][axis] != expected[axis]:
                raise ServeRefused(f"adapter tensor {name} has shape {tensor['shape']} but the served model's "
                                   f"{module} is {expected}: it was trained on another model")


def read_adapter(path: Path, session_dir: Path) -> Adapter:
    """The adapter's config and weights, checked; its base from the session's job (else adapter_config)."""
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise ServeRefused(f"no adapter at {path}: did session {session_dir.name} finish?")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:
        raise ServeRefused(f"{config_file} is not JSON ({err})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise ServeRefused(f"{path} is a {config['peft_type']} adapter; vLLM serves LoRA adapters only")
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise ServeRefused(f"{path} has no adapter_model.safetensors")
    check_safetensors(weights)
    rank = lora_rank(config)
    return Adapter(path, rank, max_lora_rank(rank), trained_on(session_dir, config),
                   tuple(config.get("modules_to_save") or ()))


def trained_on(session_dir: Path, config: dict) -> str:
    """The base model as the host sees it: the job's model (an uploaded one lives in the session folder)."""
    job_file = session_dir / files.JOB
    if job_file.exists():
        model = json.loads(job_file.read_text()).get("paths", {}).get("model")
        if model:
            local = session_dir / model
            return str(local) if not model.startswith("/") and local.exists() else model
    return str(config.get("base_model_name_or_path") or "")


def job_method(session_dir: Path) -> str:
    job_file = session_dir / files.JOB
    return json.loads(job_file.read_text()).get("spec", {}).get("method", "lora") if job_file.exists() else "lora"


def same_model(a: str, b: str) -> bool:
    """Same path or id, or two local copies whose config.json agrees on every shape."""
    if a == b or (os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)):
        return True
    configs = [Path(m) / "config.json" for m in (a, b)]
    if not all(c.exists() for c in configs):
        return False
    first, second = (json.loads(c.read_text()) for c in configs)
    return all(first.get(k) == second.get(k) for k in SHAPE_KEYS)


def check_unmerged(adapter: Adapter, served_model: str) -> int:
    """Refuse an adapter vLLM cannot serve on this model; returns the --max-lora-rank to use."""
    if adapter.modules_to_save:
        raise ServeRefused(f"the adapter saves whole modules ({', '.join(adapter.modules_to_save)}), which vLLM "
                           "cannot serve unmerged: serve it with --merge")
    if adapter.max_lora_rank is None:
        raise ServeRefused(f"adapter rank {adapter.rank} is above vLLM's largest --max-lora-rank "
                           f"{ALLOWED_LORA_RANKS[-1]}: serve it with --merge")
    if adapter.base and not same_model(adapter.base, served_model):
        raise ServeRefused(f"the adapter was trained on {adapter.base} but vLLM serves {served_model}: "
                           "serve it with --merge, which serves its own base")
    check_shapes(adapter.path / "adapter_model.safetensors", served_model)
    return adapter.max_lora_rank
