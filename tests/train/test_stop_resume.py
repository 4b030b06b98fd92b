"""Stop and resume in-process (the fast tier's check; test_train_run.py's runs of `python -m runner.train`, stopped by
the stop file or SIGTERM, are the slow tier's): the stop checkpoints, the resume ends as a run never stopped."""

import torch
from safetensors.torch import load_file

from runner.train.config import load_config
from runner.train.loop import StopRequest
from runner.train.session import run_session


def test_a_stopped_run_resumes_to_the_weights_of_a_run_never_stopped(write_config, metrics, tmp_path, monkeypatch):
    train, lora = {"max_steps": 4, "save_steps": 100}, {"rank": 8, "alpha": 16, "dropout": 0.1}  # dropout: RNG too
    run_session(load_config(write_config(train, lora=lora, output_dir=str(tmp_path / "whole"))))
    whole = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    (tmp_path / "metrics.jsonl").unlink()

    stop_file, asked = tmp_path / "STOP", StopRequest.requested

    def user_stops_after_step_1(self: StopRequest) -> bool:
        if any(r.get("step") for r in metrics()):
            stop_file.touch()  # as `runner stop` does on a host
        return asked(self)

    config = load_config(write_config(train, lora=lora))
    with monkeypatch.context() as patch:
        patch.setattr(StopRequest, "requested", user_stops_after_step_1)
        stopped = run_session(config)
    assert stopped.status == "stopped" and 1 <= stopped.step < 4
    assert metrics()[-1]["event"] == "stopped" and stopped.path.endswith(f"checkpoint-{stopped.step}")
    assert not (tmp_path / "output" / "adapter").exists()  # nothing claimed as final

    stop_file.unlink()
    done = run_session(config)
    assert done.status == "done" and done.step == 4
    assert [r for r in metrics() if r.get("event") == "start"][-1]["start_step"] == stopped.step
    for name, weight in load_file(tmp_path / "output" / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(weight, whole[name], rtol=1e-4, atol=1e-6, msg=name)
