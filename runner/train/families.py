"""The model families the trainer is verified on, what each needs from the fast paths, and the path it takes.

Each row is proved by tests/train/test_families.py: the trainer's loss and LoRA gradients on a packed
micro-batch equal the model's own forward on each example alone. The fast paths are torch's varlen flash
attention (attention.py) and the fused head + cross-entropy (loss.py); where one cannot reproduce a model's
math the model's own attention or head runs instead, and the start event says which and why. A model_type
not listed here trains on the model's own attention and head, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import AUTO, ConfigError

VARLEN = "varlen"
OWN = "the model's own attention"  # transformers' sdpa where the model supports it, else eager


@dataclass(frozen=True)
class Family:
    """What a family's forward does beyond Llama's; the fast paths must honour each flag."""

    window: bool = False  # some layers see only the last sliding_window tokens (passed per call as sliding_window)
    attention_softcap: bool = False  # scores capped: cap * tanh(scores / cap) (attn_logit_softcapping)
    logit_softcap: bool = False  # logits capped the same way (final_logit_softcapping)
    logit_multiplier: str | None = None  # config key the logits are multiplied by
    logit_divisor: str | None = None  # config key the logits are divided by


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(window=True),
    "mixtral": Family(window=True),
    "qwen2": Family(window=True),  # use_sliding_window: layers from max_window_layers on
    "qwen3": Family(window=True),
    "qwen3_moe": Family(window=True),
    "gemma": Family(),
    "gemma2": Family(window=True, attention_softcap=True, logit_softcap=True),  # refuses sdpa: own = eager
    "gemma3_text": Family(window=True, attention_softcap=True, logit_softcap=True),
    "phi3": Family(window=True),
    "olmo2": Family(),
    "granite": Family(logit_divisor="logits_scaling"),
    "cohere": Family(logit_multiplier="logit_scale"),
    "starcoder2": Family(window=True),
    "glm4": Family(),
}


@dataclass(frozen=True)
class HeadMath:
    """logits = cap * tanh(scale * h @ W.T / cap), or without the cap when softcap is None."""

    scale: float = 1.0
    softcap: float | None = None


@dataclass(frozen=True)
class AttentionPath:
    implementation: str | None  # None: the model's default (sdpa where supported, else eager)
    reason: str
    warning: str | None = None


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_math(config: Any) -> HeadMath | None:
    """How a verified family turns hidden states into logits; None for a family not in FAMILIES."""
    config = text_config(config)
    family = FAMILIES.get(config.model_type)
    if family is None:
        return None
    scale = 1.0
    if family.logit_multiplier:
        scale *= float(getattr(config, family.logit_multiplier))
    if family.logit_divisor:
        scale /= float(getattr(config, family.logit_divisor))
    softcap = getattr(config, "final_logit_softcapping", None) if family.logit_softcap else None
    return HeadMath(scale, float(softcap) if softcap else None)


def unverified_warning(config: Any) -> str | None:
    model_type = text_config(config).model_type
    if model_type in FAMILIES:
        return None
    return (
        f"model_type {model_type} is not among the verified families ({', '.join(FAMILIES)}): "
        "training on the model's own attention and head"
    )


def attention_softcap(config: Any) -> float | None:
    """The cap a verified family applies to attention scores; only eager attention reproduces it."""
    config = text_config(config)
    family = FAMILIES.get(config.model_type, Family())
    return getattr(config, "attn_logit_softcapping", None) if family.attention_softcap else None


def varlen_limits(config: Any, window_kernel: bool) -> list[str]:
    """What torch's varlen kernel cannot do that this model's forward does (empty: varlen is exact)."""
    config = text_config(config)
    family = FAMILIES.get(config.model_type, Family())
    limits = []
    cap = attention_softcap(config)
    if cap:
        limits.append(f"{config.model_type} caps attention scores (attn_logit_softcapping {cap})")
    dropout = getattr(config, "attention_dropout", 0) or 0
    if dropout > 0:
        limits.append(f"attention_dropout is {dropout} (the varlen kernel has no dropout)")
    window = getattr(config, "sliding_window", None)
    if family.window and window and not window_kernel:
        limits.append(f"sliding_window {window} (this torch's varlen kernel takes no window)")
    return limits


def choose_attention(
    config: Any, requested: str, fast: str | None, packing: bool, window_kernel: bool
) -> AttentionPath:
    """The attention the model trains with. requested: train.attention; fast: what the device offers (varlen)."""
    config = text_config(config)
    warning = unverified_warning(config)
    limits = varlen_limits(config, window_kernel)
    cap = attention_softcap(config)
    if requested != AUTO:
        if requested == VARLEN and limits:
            raise ConfigError(f"train.attention varlen cannot train this model: {limits[0]}; use auto or eager")
        if requested == "sdpa" and cap:  # transformers 5.17 lets Gemma 2 run sdpa, which drops the cap
            raise ConfigError(f"train.attention sdpa cannot cap attention scores as {config.model_type} does; use auto")
        return AttentionPath(requested, "set in the config", warning)
    if warning:
        return AttentionPath(None, f"{OWN}: model_type {config.model_type} is not verified", warning)
    why = None
    if fast != VARLEN:
        why = "no varlen kernel on this device"
    elif not packing:
        why = "rows are padded (train.packing false)"
    elif limits:
        why = limits[0]
    if why:
        # only eager applies an attention cap (sdpa drops it)
        return AttentionPath("eager" if cap else None, f"{OWN}{' (eager, to cap scores)' if cap else ''}: {why}")
    window = getattr(config, "sliding_window", None) if FAMILIES[config.model_type].window else None
    return AttentionPath(VARLEN, "torch varlen flash attention" + (f" with sliding_window {window}" if window else ""))
