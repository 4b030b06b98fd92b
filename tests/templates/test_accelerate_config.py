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


MULTI_NODE = [
    # th1 of a 2-host job where every host uses one GPU: its first GPU only, 2 processes in all
    ({"machines": 2, "machine_rank": 0, "main_address": "10.77.0.11", "processes_per_machine": 1},
     [A_3090TI, A_4090], "ddp",
     {"distributed_type": "MULTI_GPU", "num_machines": 2, "machine_rank": 0, "main_process_ip": "10.77.0.11",
      "num_processes": 2, "gpu_ids": "0", "rdzv_backend": "static", "main_process_port": 29611}),
    ({"machines": 3, "machine_rank": 2, "main_address": "10.77.0.11", "processes_per_machine": 2},
     [A_3090TI, A_4090], "fsdp",
     {"distributed_type": "FSDP", "num_machines": 3, "machine_rank": 2, "num_processes": 6, "gpu_ids": "0,1"}),
    ({"machines": 2, "machine_rank": 1, "main_address": "10.77.0.11", "processes_per_machine": 1},
     [A_4090], "ddp", {"distributed_type": "MULTI_GPU", "num_processes": 2, "gpu_ids": "1"}),
]


@pytest.mark.parametrize(("cluster", "gpus", "strategy", "expect"), MULTI_NODE)
def test_multi_node_config_loads_with_accelerate(tmp_path, cluster, gpus, strategy, expect):
    path = tmp_path / "default_config.yaml"
    path.write_text(render("accelerate/default_config.yaml.j2", accelerate_config_gpus=gpus,
                           accelerate_config_strategy=strategy, accelerate_config_port=29611,
                           **{f"accelerate_config_{k}": v for k, v in cluster.items()}))
    config = load_config_from_file(str(path))
    for key, value in expect.items():
        got = getattr(config, key)
        assert (got.value if hasattr(got, "value") else got) == value, key
