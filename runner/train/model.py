"""Load the base model and tokenizer, add LoRA, and pick the fast paths this machine supports."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sysconfig
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import VARLEN, register_varlen_attention, varlen_kernel_available, window_kernel_available
from .config import AUTO, ConfigError, LoraSettings, TrainConfig
from .families import HeadMath, choose_attention, head_math, unverified_warning
from .loss import linear_cross_entropy_sum

log = logging.getLogger("runner.train")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass(frozen=True)
class Features:
    """What the run uses, resolved from the config's "auto" values; logged in the start event."""

    attention: str | None  # None: the model's own default (sdpa where it supports it, else eager)
    liger: bool
    compile: bool
    packing: bool
    attention_reason: str = ""
    warning: str | None = None  # the model's family is not verified (families.FAMILIES)


def resolve_features(
    cfg: TrainConfig, device: torch.device, sharded: bool = False, model_config: Any = None
) -> Features:
    """Turn "auto" into concrete choices: fast paths on CUDA where installed and exact for this model's family
    (families.py), the model's own attention elsewhere. Without model_config: the device's choice alone."""
    t = cfg.train
    packing = t.packing if t.packing != AUTO else True
    fast = VARLEN if varlen_kernel_available(device) and packing else None
    if model_config is None:
        attention = t.attention if t.attention != AUTO else fast or "sdpa"
        path = None
    else:
        path = choose_attention(model_config, t.attention, fast, packing, window_kernel_available())
        attention = path.implementation
    if attention == VARLEN:
        register_varlen_attention()
    if not packing and attention in (VARLEN, "flash_attention_2"):
        raise ConfigError(f"train.attention {attention} needs train.packing true (padding-free rows)")
    cuda = device.type == "cuda"
    # Compiled layers fuse what Liger fuses and LoRA's small ops too (8B on an H100: compile 14.5k tokens/s,
    # Liger 12.8k, both 13.0k: Liger's kernels do not trace). QLoRA too: bitsandbytes' 4-bit ops trace (8B QLoRA
    # on a 24 GiB cap: compiled 10.8k tokens/s, Liger 10.0k; bench/RESULTS.md); the sizing probe runs the compiled
    # layers, so it measures their memory. Triton (what compiled code runs on) covers sm80 and newer consumer cards
    # (3090 Ti sm86, 4090 sm89). FSDP's sharded parameters stay eager.
    # Triton builds each kernel's launcher (C that includes Python.h) on the host: without a C compiler or Python's
    # headers, compiled layers and Liger's kernels fail at their first step, so `auto` runs the layers eagerly.
    missing = triton_build_missing() if cuda else None
    triton = _installed("triton") and missing is None
    compiles = cuda and not sharded and t.liger is not True and triton
    compile_ = t.compile if t.compile != AUTO else compiles
    liger = t.liger if t.liger != AUTO else cuda and not compile_ and triton and _installed("liger_kernel")
    if liger and not _installed("liger_kernel"):
        raise ConfigError("train.liger is true but liger-kernel is not installed (pip install liger-kernel)")
    if missing and (compile_ is True or liger is True):
        raise ConfigError(NO_TRITON_BUILD.format(what="train.compile" if compile_ is True else "train.liger",
                                                 missing=missing))
    if missing and t.compile == AUTO and t.liger == AUTO:
        log.warning("this host lacks %s, which Triton needs to build kernels: the layers run eagerly (slower); "
                    "install gcc and python3-dev for compiled layers", missing)
    return Features(
        attention=attention,
        liger=bool(liger),
        compile=bool(compile_),
        packing=packing,
        attention_reason=path.reason if path else "",
        warning=path.warning if path else None,
    )


NO_TRITON_BUILD = ("{what} is true but this host lacks {missing}, which Triton needs to build its kernels; "
                   "install it (apt install gcc python3-dev) or set {what} to auto")


def triton_build_missing() -> str | None:
    """What this host lacks for Triton to build its kernels' launchers, by Triton's own lookup (runtime/build.py:
    $CC, gcc or clang, compiling C that includes Python.h); None when nothing is missing."""
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return "a C compiler (gcc or clang)"
    scheme = sysconfig.get_default_scheme()
    include = sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return "Python's headers (python3-dev)"
    return None


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def weight_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Base weights in the autocast dtype (frozen, so no fp32 master copy is needed)."""
    return DTYPES[precision] if device.type == "cuda" or precision == "bf16" else torch.float32


def load_tokenizer(cfg: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    cfg: TrainConfig, precision: str, features: Features, device: torch.device, fsdp: bool
) -> nn.Module:
    """The base model from safetensors, in the training dtype; 4-bit NF4 for QLoRA."""
    from transformers import AutoModelForCausalLM

    dtype = weight_dtype(precision, device)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": cfg.trust_remote_code,
        "use_safetensors": True,
        "attn_implementation": features.attention,
    }
    if cfg.method == "qlora":
        kwargs["quantization_config"] = qlora_quantization(dtype)
        if not fsdp:
            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    if cfg.method != "qlora" and not fsdp:
        model.to(device)
    return model


def qlora_quantization(dtype: torch.dtype) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ConfigError("method qlora needs bitsandbytes (pip install 'gpu-runner[qlora]')") from err
    from transformers import BitsAndBytesConfig

    compute = dtype if dtype != torch.float32 else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def read_model_config(cfg: TrainConfig) -> Any:
    """The model folder's config.json (its model_type picks the family's paths)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)


def load_training_model(
    cfg: TrainConfig,
    precision: str,
    device: torch.device,
    *,
    sharded: bool = False,
    fsdp: bool = False,
    model: nn.Module | None = None,
) -> tuple[CausalLMLoss, Features]:
    """Pick the paths for this model's family and device, load it (or take an in-memory base model), add LoRA,
    and put it in training mode; returns the loss module the session trains and the features it uses."""
    features = resolve_features(cfg, device, sharded, model.config if model is not None else read_model_config(cfg))
    if model is None:
        model = load_base_model(cfg, precision, features, device, fsdp)
    elif features.attention is not None:
        model.set_attn_implementation(features.attention)
    if features.attention is None:  # the model's own default: name what transformers picked
        features = dataclasses.replace(features, attention=model.config._attn_implementation)
    if features.warning:
        log.warning(features.warning)
    log.info("attention: %s (%s)", features.attention, features.attention_reason)
    peft_model = prepare_model(model, cfg.lora, features)
    # from_pretrained returns eval mode: dropout and activation checkpointing act only in training mode.
    # Everything from here on trains (the sizing probe too, so it measures checkpointing as it will run).
    peft_model.train()
    return CausalLMLoss(peft_model), features


def prepare_model(model: nn.Module, lora: LoraSettings, features: Features) -> nn.Module:
    """Freeze the base, apply Liger kernels, add LoRA adapters (fp32 weights); returns the PEFT model."""
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    if features.liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # Our loss already fuses the head and cross-entropy; Liger fuses norm, SwiGLU and RoPE
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if next(model.parameters()).dtype != torch.float32:
        # Under autocast PEFT's cast of each input to the fp32 adapters is a wasted copy: matmuls run in bf16
        for module in peft_model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = False
    return peft_model


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (about a third more compute)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


COMPILED = "_runner_compiled"  # a compiled layer's own compiled call (activations.py routes checkpointing around it)


def compile_layers(model: nn.Module) -> None:
    """Compile each decoder layer in place: fuses norms, activations, RoPE and LoRA's small ops."""
    for layer in decoder_layers(model):
        layer.compile()
        setattr(layer, COMPILED, layer._compiled_call_impl)


def layers_compiled(model: nn.Module) -> bool:
    return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in decoder_layers(model))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_decoder().layers)


class CausalLMLoss(nn.Module):
    """What DDP/FSDP wrap: the decoder, then fused head + cross-entropy; returns the summed token loss.

    The fused head computes the family's own logits (scaling, soft-capping: families.head_math); a family not
    verified, or a head that is not a plain linear layer (LoRA on lm_head, a bias), runs the model's own head.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(base, "_no_split_modules", None)  # FSDP wraps these layer classes
        head = base.get_output_embeddings()
        self.head_math: HeadMath | None = head_math(base.config)
        plain = type(head) is nn.Linear and head.bias is None
        self.fused = plain and self.head_math is not None
        if self.fused:
            self.head_reason = "fused head and cross-entropy" + _describe(self.head_math)
        elif self.head_math is None:
            self.head_reason = "the model's own head: " + (unverified_warning(base.config) or "")
        else:
            self.head_reason = "the model's own head: lm_head is not a plain linear layer (LoRA or bias)"

    def path_info(self) -> dict[str, str]:
        """For the start event: which head runs and why."""
        return {"head": "fused" if self.fused else "model", "head_reason": self.head_reason}

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seq_lens: torch.Tensor | None = None,
        max_length: int | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if cu_seq_lens is not None:
            kwargs = {
                "cu_seq_lens_q": cu_seq_lens,
                "cu_seq_lens_k": cu_seq_lens,
                "max_length_q": max_length,
                "max_length_k": max_length,
            }
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if not self.fused:
            logits = base(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                use_cache=False,
                **kwargs,
            ).logits
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        hidden = base.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **kwargs,
        ).last_hidden_state
        math = self.head_math
        weight = base.get_output_embeddings().weight
        return linear_cross_entropy_sum(hidden.flatten(0, 1), weight, targets.flatten(), math.scale, math.softcap)


def _describe(math: HeadMath) -> str:
    parts = ([f"logits x {math.scale:g}"] if math.scale != 1.0 else []) + (
        [f"soft-capped at {math.softcap:g}"] if math.softcap else []
    )
    return f" ({', '.join(parts)})" if parts else ""
