"""The trainer's probe, in-process, on every bad case of test_preflight_data.py: the config the host hands the trainer
(launch.trainer_config) is refused with the case's one-line message. The fast tier's check of each message; the
whole `python -m runner.host check` path runs three of the cases fast and the others in the slow tier."""

import importlib.util

import pytest
from simhost import spec
from test_preflight_data import BAD_CASES, model_copy

from runner.host.launch import trainer_config
from runner.spec import validate_spec
from runner.train.config import ConfigError, parse_config
from runner.train.probe import probe

PASSES_WITH = {"qlora_without_bitsandbytes": "bitsandbytes", "varlen_without_cuda": "cuda"}  # a case this host passes


def has(what: str) -> bool:
    if what == "cuda":
        import torch

        return torch.cuda.is_available()
    return importlib.util.find_spec(what) is not None


@pytest.mark.parametrize(("name", "change", "dataset", "model_change", "message"), BAD_CASES,
                         ids=[c[0] for c in BAD_CASES])
def test_the_probe_refuses_each_case_in_one_line(tmp_path, tiny_model, monkeypatch, name, change, dataset,
                                                 model_change, message):
    if name in PASSES_WITH and has(PASSES_WITH[name]):
        pytest.skip(f"this machine has {PASSES_WITH[name]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the host runs the probe: nothing is downloaded
    model = model_copy(tiny_model, tmp_path / "model", model_change) if model_change else tiny_model
    job = {"session_id": "s1", "host": "localhost", "spec": validate_spec(spec(**change)).model_dump(),
           "paths": {"model": str(model), "dataset": str(dataset)}}
    with pytest.raises(ConfigError) as refused:
        probe(parse_config(trainer_config(job, tmp_path / "sessions" / "s1")))
    assert message in str(refused.value) and "\n" not in str(refused.value)
