"""runner.host.serve on this machine: adapter checks, rank rounding, the vLLM command and its drop-in,
the rollback's order, and a real merge of the tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from adapters import make_adapter

from runner.host import adapter_checks, inference, served_files
from runner.host import serve as host_serve

VLLM_UNIT = Path(__file__).resolve().parents[1] / "hosts" / "vllm.service"


@pytest.mark.parametrize(("rank", "allowed"), [(1, 1), (2, 8), (8, 8), (9, 16), (64, 64), (300, 320), (512, 512),
                                               (600, None)])
def test_max_lora_rank_is_the_smallest_allowed_value_that_holds_the_rank(rank, allowed):
    assert adapter_checks.max_lora_rank(rank) == allowed


def test_rank_pattern_counts():
    assert adapter_checks.lora_rank({"r": 8, "rank_pattern": {"q_proj": 32, "v_proj": 4}}) == 32
    assert adapter_checks.lora_rank({"r": 16}) == 16


def test_a_good_adapter_passes_with_its_base(session_dir, tiny_model):
    adapter = host_serve.read_adapter(session_dir / "output" / "adapter", session_dir)
    assert (adapter.rank, adapter.max_lora_rank, adapter.base) == (8, 8, str(tiny_model))
    assert host_serve.check_unmerged(adapter, str(tiny_model)) == 8


def test_a_copy_of_the_base_matches_another_model_does_not(session_dir, tiny_model, tmp_path):
    adapter = host_serve.read_adapter(session_dir / "output" / "adapter", session_dir)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert host_serve.check_unmerged(adapter, str(copy)) == 8
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "hidden_size": 256}))
    with pytest.raises(host_serve.ServeRefused, match=r"trained on .* but vLLM serves .*--merge"):
        host_serve.check_unmerged(adapter, str(copy))


def test_modules_to_save_cannot_be_served_unmerged(session_dir):
    config_file = session_dir / "output" / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "modules_to_save": ["lm_head"]}))
    adapter = host_serve.read_adapter(config_file.parent, session_dir)
    with pytest.raises(host_serve.ServeRefused, match=r"saves whole modules \(lm_head\).*--merge"):
        host_serve.check_unmerged(adapter, adapter.base)


def test_rank_600_is_refused_with_the_way_out(session_dir):
    config_file = session_dir / "output" / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "rank_pattern": {"q_proj": 600}}))
    adapter = host_serve.read_adapter(config_file.parent, session_dir)
    with pytest.raises(host_serve.ServeRefused, match=r"rank 600 is above .* 512: serve it with --merge"):
        host_serve.check_unmerged(adapter, adapter.base)


@pytest.mark.parametrize("damage", ["truncate", "garble_header"])
def test_corrupt_weights_are_refused(session_dir, damage):
    weights = session_dir / "output" / "adapter" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    with pytest.raises(host_serve.ServeRefused, match="is corrupt"):
        host_serve.read_adapter(weights.parent, session_dir)


def test_a_missing_adapter_names_the_session(tmp_path):
    with pytest.raises(host_serve.ServeRefused, match="did session S9 finish"):
        host_serve.read_adapter(tmp_path / "S9" / "output" / "adapter", tmp_path / "S9")


def systemctl_cat(unit_text: str, dropins: dict[str, str]) -> str:
    """The shape of `systemctl cat vllm`: each file under a '# /path' header."""
    parts = [f"# /etc/systemd/system/vllm.service\n{unit_text}"]
    parts += [f"# /etc/systemd/system/vllm.service.d/{name}\n{text}" for name, text in sorted(dropins.items())]
    return "\n".join(parts)


def test_the_base_command_comes_from_the_unit_not_our_dropin():
    ours = host_serve.render_dropin(["/bin/false"], "x")
    command = host_serve.unit_command(systemctl_cat(VLLM_UNIT.read_text(), {host_serve.DROPIN_NAME: ours}))
    assert command[:3] == ["/home/serve/vllm-serve/venv/bin/vllm", "serve", "/opt/models/tiny-chat"]
    assert "--distributed-executor-backend" in command and "\\" not in command
    assert host_serve.served_model(command) == "/opt/models/tiny-chat"
    assert host_serve.served_names(command) == ["tiny-chat"]
    other = "[Service]\nExecStart=\nExecStart=/opt/v/bin/python -m vllm.entrypoints.openai.api_server --model m\n"
    assert host_serve.unit_command(systemctl_cat(VLLM_UNIT.read_text(), {"override.conf": other}))[-2:] == [
        "--model", "m"]


def test_adapter_command_keeps_the_users_adapters_and_the_larger_rank():
    base = ["/v/vllm", "serve", "/m", "--enable-lora", "--lora-modules", "theirs=/a", "--max-lora-rank", "64",
            "--port", "8000"]
    command = host_serve.with_adapter(base, "mine", Path("/var/lib/gpu-runner/serve/S1/adapter"), 8)
    assert command == ["/v/vllm", "serve", "/m", "--port", "8000", "--enable-lora", "--lora-modules", "theirs=/a",
                       "mine=/var/lib/gpu-runner/serve/S1/adapter", "--max-lora-rank", "64"]
    plain = host_serve.with_adapter(["/v/vllm", "serve", "/m", "--max-lora-rank=16"], "mine", Path("/p"), 32)
    assert plain[-5:] == ["--enable-lora", "--lora-modules", "mine=/p", "--max-lora-rank", "32"]


def test_merged_command_replaces_model_and_name():
    base = ["/v/vllm", "serve", "/opt/models/tiny-chat", "--served-model-name", "tiny-chat", "--port", "8000"]
    command = host_serve.with_model(base, Path("/srv/merged"), "tuned")
    assert command == ["/v/vllm", "serve", "/srv/merged", "--port", "8000", "--served-model-name", "tuned"]
    assert host_serve.with_model(["py", "-m", "x", "--model", "'/a b'"], Path("/m"), "n")[4] == "/m"


def test_quoted_words_and_variables_stay_as_written():
    line = 'ExecStart=/v/vllm serve $MODEL --chat-template "/etc/a b.jinja" --port %i\n'
    assert host_serve.unit_command(line) == ["/v/vllm", "serve", "$MODEL", "--chat-template", '"/etc/a b.jinja"',
                                             "--port", "%i"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_dropin_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "vllm.service"
    unit.write_text(VLLM_UNIT.read_text().replace("/home/serve/vllm-serve/venv/bin/vllm", "/bin/echo")
                    .replace("User=serve\nGroup=serve\n", ""))
    command = host_serve.with_adapter(host_serve.unit_command(unit.read_text()), "mine", Path("/p"), 8)
    (tmp_path / "vllm.service.d").mkdir()
    (tmp_path / "vllm.service.d" / host_serve.DROPIN_NAME).write_text(host_serve.render_dropin(command, "test"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr  # it reads the drop-in too


class FakeUnit:
    """Stands in for systemctl and the health gate: records the order of what switch() does."""

    def __init__(self, tmp_path: Path, healthy: dict[str, bool]):
        self.unit = host_serve.Unit("vllm.service", "http://127.0.0.1:1", ["/v/vllm", "serve", "/m"])
        self.dropin = tmp_path / "vllm.service.d" / host_serve.DROPIN_NAME
        self.healthy = healthy
        self.events: list[str] = []

    def restart(self, unit: str) -> float:
        self.events.append("restart:" + (self.dropin.read_text().splitlines()[1] if self.dropin.exists() else "none"))
        return 0.0

    def gate(self, unit, names, timeout_s, since) -> float:
        self.events.append("gate:" + ",".join(names))
        if not all(self.healthy.get(n, True) for n in names):
            raise inference.InferenceError(f"{names[0]}: a 1-token completion answered 500")
        return 1.0


@pytest.fixture
def fake_unit(tmp_path, monkeypatch):
    def make(healthy: dict[str, bool]) -> FakeUnit:
        fake = FakeUnit(tmp_path, healthy)
        monkeypatch.setattr(host_serve.Unit, "dropin", property(lambda self: fake.dropin))
        monkeypatch.setattr(host_serve, "restart", fake.restart)
        monkeypatch.setattr(host_serve, "gate", fake.gate)
        return fake
    return make


def test_a_failed_gate_puts_the_previous_dropin_back_and_checks_it(fake_unit):
    fake = fake_unit({"new": False})
    host_serve.write_dropin(fake.dropin, host_serve.render_dropin(["/v/vllm"], "old"))
    with pytest.raises(host_serve.ServeFailed, match=r"answered 500; rolled back .*old healthy again"):
        host_serve.switch(fake.unit, host_serve.render_dropin(["/v/vllm"], "new"), ["new"], ["old"], 5)
    assert fake.events == ["restart:# Serves: new", "gate:new", "restart:# Serves: old", "gate:old"]
    assert "# Serves: old" in fake.dropin.read_text()


def test_a_failed_gate_with_no_previous_dropin_removes_ours(fake_unit):
    fake = fake_unit({"new": False})
    with pytest.raises(host_serve.ServeFailed, match="rolled back"):
        host_serve.switch(fake.unit, host_serve.render_dropin(["/v/vllm"], "new"), ["new"], ["base"], 5)
    assert not fake.dropin.exists() and fake.events[-2:] == ["restart:none", "gate:base"]


def test_when_the_rollback_is_unhealthy_too_both_are_said(fake_unit):
    fake = fake_unit({"new": False, "old": False})
    with pytest.raises(host_serve.ServeFailed, match="put back but is not healthy either"):
        host_serve.switch(fake.unit, host_serve.render_dropin(["/v/vllm"], "new"), ["new"], ["old"], 5)


def test_merge_dtype_never_keeps_4bit_and_qlora_goes_to_bf16():
    assert served_files.merge_dtype({"dtype": "bfloat16"}, "qlora") == "bfloat16"
    assert served_files.merge_dtype({"torch_dtype": "float16"}, "lora") == "float16"
    assert served_files.merge_dtype({"dtype": "float32"}, "qlora") == "bfloat16"
    assert served_files.merge_dtype({"dtype": "float32"}, "lora") == "float32"


def test_a_quantized_base_is_refused_for_merge(session_dir, tiny_model, tmp_path):
    quantized = shutil.copytree(tiny_model, tmp_path / "q")
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (quantized / "config.json").write_text(json.dumps(config))
    adapter = host_serve.read_adapter(session_dir / "output" / "adapter", session_dir)
    with pytest.raises(host_serve.ServeRefused, match=r"stored bitsandbytes; .*unquantized"):
        served_files.check_mergeable(adapter_checks.Adapter(adapter.path, 8, 8, str(quantized), ()))
    with pytest.raises(host_serve.ServeRefused, match="GiB free"):
        served_files.check_mergeable(adapter, free_disk_b=10)


def test_merge_gives_the_adapters_outputs_and_is_reused(session_dir, tmp_path, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(served_files, "SERVE_ROOT", tmp_path / "serve")
    adapter = host_serve.read_adapter(session_dir / "output" / "adapter", session_dir)
    merged = host_serve.merge(adapter, "lora", tmp_path / "serve" / "S1" / "merged")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter.base), adapter.path)(ids)
        got = AutoModelForCausalLM.from_pretrained(merged)(ids)
        base = AutoModelForCausalLM.from_pretrained(adapter.base)(ids)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4)
    assert not torch.allclose(got.logits, base.logits, atol=1e-2)  # the adapter changed something
    assert not list(merged.glob("*lora*")) and (merged / "tokenizer.json").exists()
    assert oct(merged.stat().st_mode & 0o777) == "0o755" and not list(merged.parent.glob(".tmp-*"))
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    host_serve.merge(adapter, "lora", merged)
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp  # same weights: not merged again


def test_a_new_rank_adapter_in_the_same_session_is_merged_again(session_dir, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(served_files, "SERVE_ROOT", tmp_path / "serve")
    adapter_dir = session_dir / "output" / "adapter"
    first = host_serve.merge(host_serve.read_adapter(adapter_dir, session_dir), "lora", tmp_path / "serve" / "m")
    marker = json.loads((first / served_files.MERGE_MARKER).read_text())
    shutil.rmtree(adapter_dir)
    make_adapter(tiny_model, adapter_dir, rank=16, seed=1)
    host_serve.merge(host_serve.read_adapter(adapter_dir, session_dir), "lora", first)
    assert json.loads((first / served_files.MERGE_MARKER).read_text())["adapter_sha256"] != marker["adapter_sha256"]


def test_prune_keeps_only_what_is_served(tmp_path, monkeypatch):
    monkeypatch.setattr(served_files, "SERVE_ROOT", tmp_path / "serve")
    for copy in ("S1/adapter", "S1/merged", "S2/adapter"):
        (tmp_path / "serve" / copy).mkdir(parents=True)
    host_serve.prune_served(keep={str(tmp_path / "serve" / "S1" / "merged")})
    assert [p.relative_to(tmp_path / "serve").as_posix() for p in (tmp_path / "serve").glob("*/*")] == ["S1/merged"]
    host_serve.prune_served(keep=set())
    assert list((tmp_path / "serve").iterdir()) == []


def test_an_adapter_whose_shapes_do_not_fit_the_served_model_is_refused(session_dir, tiny_model, tmp_path):
    import torch
    from safetensors.torch import save_file

    adapter = session_dir / "output" / "adapter" / "adapter_model.safetensors"
    adapter_checks.check_shapes(adapter, str(tiny_model))  # its own base fits
    other = tmp_path / "other"
    other.mkdir()
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 64)}, other / "model.safetensors")
    with pytest.raises(host_serve.ServeRefused, match=r"q_proj.lora_A.weight has shape \[8, 128\] .* \[128, 64\]"):
        adapter_checks.check_shapes(adapter, str(other))
