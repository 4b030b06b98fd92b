"""Load the base model and tokenizer, add LoRA, and pick the fast paths this machine supports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import register_varlen_attention, varlen_kernel_available
from .config import AUTO, ConfigError, LoraSettings, TrainConfig
from .loss import linear_cross_entropy_sum

log = logging.getLogger("runner.train")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


@dataclass(frozen=True)
class Features:
    """What the run uses, resolved from the config's "auto" values; logged in the start event."""

    attention: str
    liger: bool
    compile: bool
    packing: bool


def resolve_features(cfg: TrainConfig, device: torch.device, sharded: bool = False) -> Features:
    """Turn "auto" into concrete choices: fast paths on CUDA where installed, plain torch on CPU."""
    t = cfg.train
    packing = t.packing if t.packing != AUTO else True
    attention = t.attention
    if attention == AUTO:
        attention = "varlen" if varlen_kernel_available(device) else "sdpa"
    if attention == "varlen":
        register_varlen_attention()
    if not packing and attention in ("varlen", "flash_attention_2"):
        raise ConfigError(f"train.attention {attention} needs train.packing true (padding-free rows)")
    cuda = device.type == "cuda"
    # Compiled layers fuse what Liger fuses and LoRA's small ops too (8B on an H100: compile 14.5k tokens/s,
    # Liger 12.8k, both 13.0k: Liger's kernels do not trace).
    # QLoRA's 4-bit matmuls and FSDP's sharded parameters stay eager.
    compile_ = t.compile if t.compile != AUTO else cuda and cfg.method == "lora" and not sharded and t.liger is not True
    liger = t.liger if t.liger != AUTO else cuda and not compile_ and _installed("liger_kernel")
    if liger and not _installed("liger_kernel"):
        raise ConfigError("train.liger is true but liger-kernel is not installed (pip install liger-kernel)")
    return Features(attention=attention, liger=bool(liger), compile=bool(compile_), packing=packing)


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


def compile_layers(model: nn.Module) -> None:
    """Compile each decoder layer in place: fuses norms, activations, RoPE and LoRA's small ops."""
    for layer in decoder_layers(model):
        layer.compile()


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.get_decoder().layers)


class CausalLMLoss(nn.Module):
    """What DDP/FSDP wrap: the decoder, then fused head + cross-entropy; returns the summed token loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(base, "_no_split_modules", None)  # FSDP wraps these layer classes
        head = base.get_output_embeddings()
        softcap = getattr(base.config, "final_logit_softcapping", None) or getattr(base.config, "logit_scale", None)
        # A LoRA-wrapped or scaled head needs the model's own logits
        self.fused = type(head) is nn.Linear and head.bias is None and not softcap

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
        return linear_cross_entropy_sum(hidden.flatten(0, 1), base.get_output_embeddings().weight, targets.flatten())
