"""The accelerate config template renders configs that accelerate's own loader accepts."""

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

from runner.templates import render

A_3090TI = {"index": 0, "compute_capability": [8, 6]}
A_4090 = {"index": 1, "compute_capability": [8, 9]}
TURING = {"index": 0, "compute_capability": [7, 5]}


@pytest.mark.parametrize(("gpus", "strategy", "expect"), [
    ([], "ddp", {"distributed_type": "NO", "num_processes": 1, "mixed_precision": "no", "use_cpu": True}),
    ([A_4090], "ddp", {"distributed_type": "NO", "num_processes": 1, "mixed_precision": "bf16"}),
    ([A_3090TI, A_4090], "ddp", {"distributed_type": "MULTI_GPU", "num_processes": 2, "mixed_precision": "bf16",
                                 "gpu_ids": "0,1"}),
    ([A_3090TI, A_4090], "fsdp", {"distributed_type": "FSDP", "num_processes": 2}),
    ([TURING, A_4090], "ddp", {"mixed_precision": "fp16"}),
])
def test_rendered_config_loads_with_accelerate(tmp_path, gpus, strategy, expect):
    path = tmp_path / "default_config.yaml"
    path.write_text(render("accelerate/default_config.yaml.j2", accelerate_config_gpus=gpus,
                           accelerate_config_strategy=strategy))
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    for key, value in expect.items():
        got = getattr(config, key)
        assert (got.value if hasattr(got, "value") else got) == value, key
