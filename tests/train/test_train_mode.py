"""The model a session trains is in training mode: checkpointing recomputes layers, dropout acts.

from_pretrained returns eval mode; these load a model folder from disk through the session's own loader
(model.load_training_model) and its sizing step (which turns checkpointing on), as run_session does.
"""

import json
import shutil

import pytest
import torch

from runner.train.config import load_config
from runner.train.data import IGNORE, Example
from runner.train.model import decoder_layers, load_training_model
from runner.train.packing import collate_packed
from runner.train.sizing import choose_sizing

CPU = torch.device("cpu")


def session_model(config_path):
    """The loss module as run_session builds it on CPU: loader, LoRA, training mode, sizing."""
    cfg = load_config(config_path)
    loss_model, features = load_training_model(cfg, "no", CPU)
    sizing = choose_sizing(loss_model, cfg.train, features.packing, CPU)
    return loss_model, sizing


def batch(vocab: int):
    gen = torch.Generator().manual_seed(0)
    examples = [
        Example(ids, [IGNORE, *ids[1:]])
        for ids in (torch.randint(4, vocab, (n,), generator=gen).tolist() for n in (9, 14))
    ]
    return collate_packed(examples)


def test_checkpointing_recomputes_every_decoder_layer_in_backward(write_config):
    loss_model, sizing = session_model(write_config({"gradient_checkpointing": True}))
    assert sizing.checkpointing and loss_model.model.training
    calls = {"forward": 0, "backward": 0}
    phase = "forward"

    def count(*_):
        calls[phase] += 1

    layers = decoder_layers(loss_model.model)
    for layer in layers:  # transformers checkpoints a layer's forward: its submodules' hooks see the recompute
        next(layer.children()).register_forward_hook(count)
    loss = loss_model(**batch(loss_model.model.get_input_embeddings().num_embeddings))
    phase = "backward"
    loss.backward()
    assert calls == {"forward": len(layers), "backward": len(layers)}  # each layer ran again in backward


@pytest.fixture
def dropout_model(tiny_model, tmp_path):
    """A copy of the tiny model folder whose config.json sets attention dropout."""
    folder = tmp_path / "dropout-model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.2}))
    return folder


@pytest.mark.parametrize("where", ["model attention_dropout", "lora.dropout"])
def test_dropout_acts_in_training(write_config, dropout_model, where):
    if where == "lora.dropout":
        path = write_config(lora={"rank": 8, "alpha": 16, "dropout": 0.3})
    else:
        path = write_config(model=str(dropout_model))
    loss_model, _ = session_model(path)
    with torch.no_grad():  # LoRA B starts at zero, which hides LoRA dropout until the first step
        for name, p in loss_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    inputs = batch(loss_model.model.get_input_embeddings().num_embeddings)
    with torch.no_grad():
        first, second = loss_model(**inputs), loss_model(**inputs)
    assert not torch.equal(first, second)  # a different dropout mask each forward
