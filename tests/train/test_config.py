import json
import re

import pytest

from runner.train.config import ConfigError, load_config, parse_config

BASE = {"model": "m", "dataset": "d.jsonl", "output_dir": "/tmp/out"}


def test_defaults_follow_the_contract():
    cfg = parse_config(BASE)
    assert cfg.method == "lora" and cfg.format == "auto" and cfg.resume is True
    assert cfg.trust_remote_code is False
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules) == (16, 32, "all-linear")
    t = cfg.train
    assert (t.batch_size, t.packing, t.gradient_checkpointing, t.liger, t.compile, t.attention) == ("auto",) * 6
    assert (t.max_seq_len, t.save_steps, t.max_steps) == (2048, 50, None)


def test_full_contract_example_loads(tmp_path):
    raw = {
        **BASE,
        "format": "chat",
        "method": "qlora",
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "train": {
            "epochs": 1,
            "max_steps": None,
            "learning_rate": 0.0002,
            "batch_size": 4,
            "grad_accum": 1,
            "max_seq_len": 2048,
            "packing": True,
            "seed": 0,
            "save_steps": 50,
            "gradient_checkpointing": "auto",
            "liger": False,
            "compile": "auto",
            "attention": "sdpa",
        },
        "trust_remote_code": False,
        "metrics_path": "/m.jsonl",
        "stop_file": "/STOP",
        "resume": True,
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    cfg = load_config(path)
    assert cfg.lora.target_modules == ("q_proj", "v_proj") and cfg.train.batch_size == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "epochz": 1}, "unknown config key 'epochz'"),
        ({**BASE, "train": {"lr": 1}}, "unknown config key 'train.lr'"),
        ({**BASE, "lora": {"r": 8}}, "unknown config key 'lora.r'"),
        ({"dataset": "d", "output_dir": "o"}, "'model' is required"),
        ({**BASE, "method": "full"}, "method must be one of"),
        ({**BASE, "train": {"batch_size": 0}}, 'train.batch_size must be a positive integer or "auto"'),
        ({**BASE, "train": {"packing": "yes"}}, 'train.packing must be true, false or "auto"'),
        ({**BASE, "train": {"attention": "magic"}}, "train.attention must be one of"),
    ],
)
def test_bad_configs_raise_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(raw)
    assert "\n" not in str(err.value)


def test_auto_features_on_cpu_are_plain_torch():
    import torch

    from runner.train.model import resolve_features

    features = resolve_features(parse_config(BASE), torch.device("cpu"))
    assert (features.attention, features.liger, features.compile, features.packing) == ("sdpa", False, False, True)


@pytest.mark.parametrize(
    ("method", "train", "sharded", "expected"),
    [
        ("lora", {}, False, (True, False)),
        ("qlora", {}, False, (True, False)),  # compiled 4-bit layers: the probe measures them (sizing.py)
        ("qlora", {}, True, (False, True)),  # FSDP's sharded parameters stay eager, with Liger's kernels
        ("lora", {"liger": True}, False, (False, True)),
        ("qlora", {"compile": False}, False, (False, True)),
    ],
)
def test_auto_features_on_cuda(monkeypatch, method, train, sharded, expected):
    """On a CUDA card with Triton and Liger installed: compiled layers unless sharded or Liger is asked for."""
    import torch

    from runner.train import model

    monkeypatch.setattr(model, "varlen_kernel_available", lambda device: False)
    monkeypatch.setattr(model, "_installed", lambda module: module in ("triton", "liger_kernel"))
    monkeypatch.setattr(model, "triton_build_missing", lambda: None)
    cfg = parse_config({**BASE, "method": method, "train": train})
    features = model.resolve_features(cfg, torch.device("cuda"), sharded=sharded)
    assert (features.compile, features.liger) == expected


def test_without_triton_cuda_layers_run_eagerly(monkeypatch):
    """Compiled layers and Liger's kernels are both Triton kernels."""
    import torch

    from runner.train import model

    monkeypatch.setattr(model, "varlen_kernel_available", lambda device: False)
    monkeypatch.setattr(model, "_installed", lambda module: module == "liger_kernel")
    monkeypatch.setattr(model, "triton_build_missing", lambda: None)
    features = model.resolve_features(parse_config({**BASE, "method": "qlora"}), torch.device("cuda"))
    assert (features.compile, features.liger) == (False, False)


@pytest.mark.parametrize("missing", ["a C compiler (gcc or clang)", "Python's headers (python3-dev)"])
def test_where_triton_cannot_build_cuda_layers_run_eagerly_or_are_refused(monkeypatch, caplog, missing):
    """Triton builds its kernels' launchers (C including Python.h) on the host: without a compiler or the headers
    `auto` runs the layers eagerly and says so; compile or Liger asked for are refused in one line, by the trainer
    and by the host's preflight probe."""
    import torch

    from runner.train import model, probe

    monkeypatch.setattr(model, "varlen_kernel_available", lambda device: False)
    monkeypatch.setattr(model, "_installed", lambda module: module in ("triton", "liger_kernel"))
    monkeypatch.setattr(model, "triton_build_missing", lambda: missing)
    features = model.resolve_features(parse_config({**BASE, "method": "qlora"}), torch.device("cuda"))
    assert (features.compile, features.liger) == (False, False)
    assert f"this host lacks {missing}, which Triton needs" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert probe.check_kernels(parse_config(BASE)) == [
        f"kernels: this host lacks {missing}, so the layers run eagerly; install gcc and python3-dev for compiled "
        "layers"]
    for what in ("compile", "liger"):
        cfg = parse_config({**BASE, "train": {what: True}})
        for check in (lambda cfg=cfg: model.resolve_features(cfg, torch.device("cuda")),
                      lambda cfg=cfg: probe.check_kernels(cfg)):
            with pytest.raises(ConfigError, match=rf"^train.{what} is true but this host lacks {re.escape(missing)}"):
                check()


def test_what_triton_needs_to_build_is_looked_up_as_triton_does(monkeypatch, tmp_path):
    import sysconfig

    from runner.train.model import triton_build_missing

    include = tmp_path / "include"
    include.mkdir()
    monkeypatch.setattr(sysconfig, "get_paths", lambda scheme=None: {"include": str(include)})
    monkeypatch.setenv("CC", "/no/such/cc")  # as Triton: $CC is taken as given
    assert triton_build_missing() == "Python's headers (python3-dev)"
    (include / "Python.h").write_text("")
    assert triton_build_missing() is None
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, no clang
    assert triton_build_missing() == "a C compiler (gcc or clang)"


def test_varlen_needs_packing():
    with pytest.raises(ConfigError, match=r"needs train\.packing true"):
        parse_config({**BASE, "train": {"packing": False, "attention": "varlen"}})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "train": {"epochs": float("inf")}}, "train.epochs must be a finite number > 0, not inf"),
        ({**BASE, "train": {"learning_rate": float("nan")}}, "train.learning_rate must be a finite number"),
        ({**BASE, "train": {"seed": -1}}, "train.seed must be an integer from 0 to 4294967295"),
        ({**BASE, "lora": {"target_modules": []}}, "lora.target_modules must be"),
        ({**BASE, "lora": {"target_modules": ["q_proj", ""]}}, "lora.target_modules must be"),
        ({**BASE, "lora": {"alpha": 0}}, "lora.alpha must be a finite number > 0"),
        ({**BASE, "collective_timeout_s": 0}, "collective_timeout_s must be a finite number > 0"),
    ],
)
def test_values_that_would_fail_later_are_refused_while_parsing(raw, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as err:
        parse_config(raw)
    assert "\n" not in str(err.value)
