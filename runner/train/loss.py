"""Cross-entropy fused with the output projection, in chunks, over trained tokens only.

The full logits tensor (tokens x vocabulary, 4 GB at 8k tokens and a 128k vocabulary in fp32) is never
built: each chunk's logits are made, turned into loss and the gradient of the hidden states, and freed.
Prompt tokens get no logits at all. Plain torch, so it runs on any GPU and on CPU. Families whose head
scales or soft-caps the logits (Granite, Cohere, Gemma 2/3) get exactly that: z = scale * h @ W.T, then
cap * tanh(z / cap), with the chain rule applied in the same pass.
"""

from __future__ import annotations

import torch

from .data import IGNORE

CHUNK_BYTES = 1 << 29  # fp32 logits per chunk; a few of these live at once


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum of -log softmax(logits)[target] where a target is set, logits = softcap(scale * hidden @ weight.T).

    hidden (N, H), targets (N,); softcap None leaves the logits uncapped.
    """
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype, scale, softcap)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, scale, softcap):
        keep = targets != IGNORE
        rows = hidden[keep].to(dtype)
        labels = targets[keep]
        w = weight.to(dtype)
        chunk = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
        grad_rows = torch.empty_like(rows)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        for start in range(0, rows.shape[0], chunk):
            h = rows[start : start + chunk]
            y = labels[start : start + chunk]
            logits = (h @ w.T).float()
            if scale != 1.0:
                logits.mul_(scale)
            if softcap:
                capped = logits.div_(softcap).tanh_()  # in place; kept for the chain rule below
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            grad[torch.arange(len(y), device=y.device), y] -= 1
            if softcap:
                grad.mul_(capped.square_().neg_().add_(1))  # d cap*tanh(z/cap) / dz = 1 - tanh^2
            if scale != 1.0:
                grad.mul_(scale)
            grad_rows[start : start + chunk] = grad.to(dtype) @ w
            if grad_w is not None:
                grad_w += grad.T @ h.float()
        ctx.save_for_backward(keep, grad_rows, grad_w if grad_w is not None else torch.empty(0))
        ctx.hidden_meta = (hidden.shape, hidden.dtype)
        ctx.weight_dtype = weight.dtype if grad_w is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_total):
        keep, grad_rows, grad_w = ctx.saved_tensors
        shape, dtype = ctx.hidden_meta
        grad_hidden = torch.zeros(shape, dtype=dtype, device=grad_rows.device)
        grad_hidden[keep] = (grad_rows * grad_total).to(dtype)
        grad_weight = (grad_w * grad_total).to(ctx.weight_dtype) if ctx.weight_dtype is not None else None
        return grad_hidden, grad_weight, None, None, None, None
