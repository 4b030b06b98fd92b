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
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed example. query: (1, Hq, T, D); returns (1, T, Hq, D)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # an unpacked call (e.g. generation): one sequence per row
        if query.shape[0] != 1 or attention_mask is not None:
            raise ValueError("varlen attention needs packed rows (cu_seq_lens) or a single unpadded row")
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
    max_len = kwargs.get("max_length_q") or query.shape[2]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D)
    if q.is_cuda:
        out = _flash_varlen(q, k, v, cu.to(torch.int32), int(max_len), scaling)
    else:
        out = _sdpa_per_example(q, k, v, cu.tolist(), scaling)
    return out.unsqueeze(0), None


def _sdpa_per_example(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scaling: float | None
) -> torch.Tensor:
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu):
        if end > start:
            piece = F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1),
                k[start:end].transpose(0, 1),
                v[start:end].transpose(0, 1),
                is_causal=True,
                scale=scaling,
                enable_gqa=q.shape[1] != k.shape[1],
            )
            out[start:end] = piece.transpose(0, 1)
    return out


_KERNEL: dict[str, Any] = {}  # "fn": torch's varlen_attn, "params": its keyword names


def _load_varlen_kernel() -> dict[str, Any]:
    from torch.nn.attention.varlen import varlen_attn

    # its signature changed across releases: causality, GQA and scale keywords come and go
    return {"fn": varlen_attn, "params": frozenset(inspect.signature(varlen_attn).parameters)}


def _flash_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scaling: float | None
) -> torch.Tensor:
    if not _KERNEL:
        _KERNEL.update(_load_varlen_kernel())
    params = _KERNEL["params"]
    options: dict[str, Any] = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
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
