"""Attention for packed rows: each example attends only to itself.

`varlen` is registered with transformers as an attention implementation. It reads the cu_seq_lens the
packer passes through the model's kwargs and calls torch's built-in variable-length flash attention
(torch.nn.attention.varlen, flash-attention 2 kernels: Ampere, Ada and Hopper alike), so no extra
package is needed. Off CUDA it computes the same thing one example at a time with SDPA.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import torch
import torch.nn.functional as F

VARLEN = "varlen"


def varlen_kernel_available(device: torch.device) -> bool:
    """Whether torch's variable-length flash kernel can run on this device (sm80+ CUDA)."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def register_varlen_attention() -> str:
    """Make attn_implementation='varlen' known to transformers; returns the name."""
    from transformers import AttentionInterface

    if torch.cuda.is_available() and varlen_kernel_available(torch.device("cuda")):
        _KERNEL.update(_load_varlen_kernel())  # resolved here, outside any compiled region
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed example. query: (1, Hq, T, D); returns (1, T, Hq, D).

    sliding_window W (as transformers passes it) lets a token see itself and the W - 1 tokens before it,
    as the models' eager masks do (kv_idx > q_idx - W).
    """
    if softcap:  # families.choose_attention keeps such models off this path; never compute another function
        raise ValueError(f"varlen attention cannot cap attention scores (softcap {softcap}); use the eager path")
    if dropout:
        raise ValueError(f"varlen attention has no dropout (attention dropout {dropout}); use the sdpa path")
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # an unpacked call (e.g. generation): one sequence per row
        if query.shape[0] != 1 or attention_mask is not None:
            raise ValueError("varlen attention needs packed rows (cu_seq_lens) or a single unpadded row")
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
    max_len = kwargs.get("max_length_q") or query.shape[2]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda:
        out = _flash_varlen(q, k, v, cu.to(torch.int32), int(max_len), scaling, sliding_window)
    else:
        out = _sdpa_per_example(q, k, v, cu.tolist(), scaling, sliding_window)
    return out.unsqueeze(0), None


def _sdpa_per_example(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: list[int],
    scaling: float | None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu):
        if end > start:
            mask = None
            if sliding_window and end - start > sliding_window:
                pos = torch.arange(end - start, device=q.device)
                distance = pos[:, None] - pos[None, :]
                mask = (distance >= 0) & (distance < sliding_window)
            piece = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1),
                k[start:end].transpose(0, 1),
                v[start:end].transpose(0, 1),
                attn_mask=mask,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=q.shape[1] != k.shape[1],
            )
            out[start:end] = piece.transpose(0, 1)
    return out


def window_kernel_available() -> bool:
    """Whether this torch's varlen kernel takes a sliding window (window_size)."""
    try:
        kernel = _KERNEL or _load_varlen_kernel()
    except ImportError:
        return False
    return "window_size" in kernel["params"]


_KERNEL: dict[str, Any] = {}  # "fn": torch's varlen_attn, "params": its keyword names


def _load_varlen_kernel() -> dict[str, Any]:
    from torch.nn.attention.varlen import varlen_attn

    # its signature changed across releases: causality, GQA and scale keywords come and go
    return {"fn": varlen_attn, "params": frozenset(inspect.signature(varlen_attn).parameters)}


def _flash_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_len: int,
    scaling: float | None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    if not _KERNEL:
        _KERNEL.update(_load_varlen_kernel())
    params = _KERNEL["params"]
    # flash's left window counts the tokens before the query: W - 1 for transformers' window of W
    left = sliding_window - 1 if sliding_window else -1
    options: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {}
    if "window_size" in params:
        options["window_size"] = (left, 0)
    elif sliding_window:
        raise ValueError(f"this torch's varlen kernel takes no window (sliding_window {sliding_window})")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:  # older torch: expand the shared key/value heads
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "scale" in params:
        options["scale"] = scaling
    elif scaling is not None:  # older torch scales by 1/sqrt(D) only
        q = q * (scaling * q.shape[-1] ** 0.5)
    return _KERNEL["fn"](q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max_len, max_len, **options)
