"""What a training step keeps of its activations: checkpointing of the decoder layers, and two levers past it.

- Checkpointing: the first N layers keep only their input and recompute the rest in backward.
- Offload: each checkpointed layer's saved input lives in (pinned) CPU memory until backward.
- Compiled layers: the checkpoint wraps the compiled call, whichever transformers runs. Inside it (torch.compile
  tracing the checkpoint) backward would recompute only what it needs, not down_proj (about a tenth of an 8B or
  24B step's products; two products a layer fewer, counted on the CPU), but on an H200 with torch 2.11 that failed
  to compile for 8B layers ("Node add_511 was invalid, but is output"): not used until a GPU shows it compiles
  and gives the same gradients.
- Chunked MLP: each layer's MLP runs over the sequence in chunks of MLP_CHUNK_TOKENS tokens, each chunk
  checkpointed on its own, so a layer's backward holds one chunk's MLP activations (the 14,336-wide
  intermediate of an 8B model is most of a layer's activations: about 0.18 of its 0.3 MiB a token) instead of
  the whole sequence's. The MLP works token by token, so the chunks compute the same function; the cost is one
  more forward of the MLP a layer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .model import COMPILED, decoder_layers, enable_checkpointing

log = logging.getLogger("runner.train")
MLP_CHUNK_TOKENS = 4096  # an 8B model's MLP activations for one chunk: about 0.7 GiB


def apply_checkpointing(
    model: nn.Module, checkpointed_layers: int | None, offload: bool, chunked_mlp: bool = False
) -> None:
    """Checkpoint the first `checkpointed_layers` decoder layers (None: all, 0: none); the others keep their
    activations. With offload, each checkpointed layer's saved input lives in (pinned) CPU memory; with
    chunked_mlp, every layer's MLP runs in sequence chunks (see the module's note)."""
    layers = decoder_layers(model)
    chunk_mlps(layers, chunked_mlp)
    if checkpointed_layers is None:
        checkpointed_layers = len(layers)
    if checkpointed_layers and not all(hasattr(layer, "_gradient_checkpointing_func") for layer in layers):
        enable_checkpointing(model)
    if not all(hasattr(layer, "gradient_checkpointing") for layer in layers):
        if checkpointed_layers != len(layers) or offload:
            log.warning("this model's layers checkpoint all or nothing: checkpointing every layer, on the GPU")
        return
    for index, layer in enumerate(layers):
        on = index < checkpointed_layers
        compiled = getattr(layer, COMPILED, None)
        layer.gradient_checkpointing = on and compiled is None  # a compiled layer's checkpoint is routed below
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if func is not None:
            plain = getattr(func, "plain", func)
            layer._gradient_checkpointing_func = _offloaded(plain) if offload else plain
        if compiled is not None:
            _route_compiled(layer, compiled, on)


def _route_compiled(layer: nn.Module, compiled: Callable[..., Any], checkpointed: bool) -> None:
    """Which call a compiled layer runs (nn.Module calls `_compiled_call_impl` in place of its own): the layer as
    compiled, or that under the layer's checkpoint function (offloaded or not). Transformers' own checkpoint stays
    off: 5.17 wraps the layer's __call__ (around the compiled call), 5.2x its forward (inside it, which torch 2.11
    failed to compile for an 8B layer; see the module's note)."""
    if not checkpointed:
        layer._compiled_call_impl = compiled
        return
    checkpoint_fn = layer._gradient_checkpointing_func

    def checkpointed_call(*args: Any, **kwargs: Any) -> Any:
        return checkpoint_fn(functools.partial(compiled, **kwargs), *args)

    layer._compiled_call_impl = checkpointed_call


def layer_checkpointed(layer: nn.Module) -> bool:
    """Whether the layer recomputes its activations in backward (by transformers' flag or a compiled route)."""
    if getattr(layer, COMPILED, None) is not None:
        return layer._compiled_call_impl is not getattr(layer, COMPILED)
    return bool(getattr(layer, "gradient_checkpointing", False))


def _offloaded(checkpoint_fn: Callable[..., Any]) -> Callable[..., Any]:
    """The checkpoint function, with what it saves (the layer's input) held in CPU memory until backward."""

    def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return checkpoint_fn(function, *args, **kwargs)

    run.plain = checkpoint_fn  # type: ignore[attr-defined]
    return run


def chunk_mlps(layers: list[nn.Module], on: bool) -> None:
    """Run each layer's dense MLP (a module named ...MLP, as in Llama, Mistral, Qwen, Gemma, Granite, Phi-3)
    in sequence chunks, or as it was. The chunks call the MLP's forward as it is (Liger patches it on the
    instance); off, that forward is put back. Other blocks (mixtures of experts) keep their own forward."""
    skipped = set()
    for layer in layers:
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not type(mlp).__name__.endswith("MLP"):
            skipped.add(type(mlp).__name__ if mlp is not None else type(layer).__name__)
            continue
        if on and not mlp_chunked(mlp):
            wrapper = functools.partial(_chunked, mlp.forward)
            wrapper.kept = vars(mlp).get("forward")  # type: ignore[attr-defined]  # an instance forward, or None
            mlp.forward = wrapper
        elif not on and mlp_chunked(mlp):
            kept = mlp.forward.kept
            if kept is None:
                del mlp.forward
            else:
                mlp.forward = kept
    if on and skipped:
        log.warning("the MLP of %s runs whole: only dense MLP blocks run in chunks", ", ".join(sorted(skipped)))


def mlp_chunked(mlp: nn.Module) -> bool:
    forward = vars(mlp).get("forward")
    return isinstance(forward, functools.partial) and forward.func is _chunked


@torch.compiler.disable  # eager inside a compiled layer: each chunk's checkpoint must free its activations
def _chunked(forward: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """forward over chunks of the sequence (dim -2; padded rows: the same width of each row)."""
    rows = hidden.shape[:-2].numel()
    width = max(MLP_CHUNK_TOKENS // max(rows, 1), 1)
    if hidden.shape[-2] <= width:
        return forward(hidden)
    parts = hidden.split(width, dim=-2)
    if torch.is_grad_enabled():
        outs = [checkpoint(forward, part, use_reentrant=False) for part in parts]
    else:
        outs = [forward(part) for part in parts]
    return torch.cat(outs, dim=-2)
