"""Served copies under SERVE_ROOT: an adapter copied, or a model merged onto its unquantized base; published
atomically, with the disk checked before a merge starts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from runner.host.adapter_checks import Adapter
from runner.host.serve_errors import ServeRefused
from runner.train.hashing import file_sha256

SERVE_ROOT = Path("/var/lib/gpu-runner/serve")
MERGE_MARKER = "gpu-runner-merge.json"


def publish(tmp: Path, final: Path) -> Path:
    """World-readable (vLLM runs as its own user), then renamed into place; an old copy goes after."""
    for root, dirs, files in os.walk(tmp):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def staging_dir(final: Path) -> Path:
    """An empty temp folder beside FINAL; the folders above are made traversable for vLLM's user."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for folder in (final.parent, *final.parent.parents):
        if not folder.is_relative_to(SERVE_ROOT.parent):
            break
        folder.chmod(folder.stat().st_mode | 0o755)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def copy_adapter(adapter: Path, final: Path) -> Path:
    tmp = staging_dir(final)
    shutil.copytree(adapter, tmp, symlinks=False)
    return publish(tmp, final)


def merge_dtype(base_config: dict, method: str) -> str:
    """The dtype the base is stored in; QLoRA adapters go onto bf16 (never the 4-bit weights)."""
    stored = str(base_config.get("dtype") or base_config.get("torch_dtype") or "float32")
    if method == "qlora" and stored == "float32":
        return "bfloat16"
    return stored if stored in ("float32", "bfloat16", "float16") else "bfloat16"


def check_mergeable(adapter: Adapter, free_disk_b: int | None = None) -> Path:
    """Refuse a base we cannot merge onto (missing, pre-quantized) or one that does not fit on disk."""
    base = Path(adapter.base)
    if not (base / "config.json").exists():
        raise ServeRefused(f"merge needs the base model on this host; {adapter.base or 'none'} is not a local "
                           "model folder")
    config = json.loads((base / "config.json").read_text())
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "quantized")
        raise ServeRefused(f"the base {base} is stored {method}; merging onto quantized weights loses the "
                           "fine-tune: point the job at the unquantized (bf16/fp16) base")
    weights = list(base.glob("*.safetensors"))  # what the merge loads (use_safetensors)
    if not weights:
        raise ServeRefused(f"merge needs the base model's weights; {base} has none here (its staged copy went with "
                           "'runner clean' or train_session_keep_days): serve the adapter on the same model instead")
    size_b = sum(f.stat().st_size for f in weights)
    SERVE_ROOT.mkdir(parents=True, exist_ok=True)
    free_b = shutil.disk_usage(SERVE_ROOT).free if free_disk_b is None else free_disk_b
    if free_b < size_b * 1.1:
        raise ServeRefused(f"merging needs about {size_b * 1.1 / 2**30:.1f} GiB free under {SERVE_ROOT}; "
                           f"{free_b / 2**30:.1f} GiB are")
    return base


def merge(adapter: Adapter, method: str, final: Path) -> Path:
    """Adapter merged onto the unquantized base on CPU, saved as safetensors (tmp dir, then rename).

    Reuses an earlier merge of the same adapter weights.
    """
    base = check_mergeable(adapter)
    weights_sha = file_sha256(adapter.path / "adapter_model.safetensors")
    marker = final / MERGE_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("adapter_sha256") == weights_sha:
        return final
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = merge_dtype(json.loads((base / "config.json").read_text()), method)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), use_safetensors=True,
                                                 device_map={"": "cpu"})
    merged = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
    tmp = staging_dir(final)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer_from = adapter.path if (adapter.path / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(tmp)
    (tmp / MERGE_MARKER).write_text(json.dumps({"base": str(base), "adapter": str(adapter.path), "dtype": dtype,
                                                "method": method, "adapter_sha256": weights_sha}, indent=1))
    return publish(tmp, final)
