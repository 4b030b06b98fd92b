"""`runner serve` on a test host with the real vLLM server: a broken adapter refused or rolled back, serve an
adapter, serve it merged, revert; then the demo trained and served. The tests run in order; each vLLM
restart costs both cores ~20 s, so there are eight.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, run_runner
from provisioning import SESSIONS_ROOT

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
DROPIN = "/etc/systemd/system/vllm.service.d/gpu-runner-serve.conf"
SESSIONS = f"{SESSIONS_ROOT}/sessions"
HOST_PYTHON = f"{SESSIONS_ROOT}/venv/bin/python"
PROMPT = "user: what is two plus two?\nassistant:"


def job_file(folder: Path) -> Path:
    """The demo on th1's own tiny model; the session stops vLLM and brings it back healthy."""
    job = {"model": "/opt/models/tiny-chat", "dataset": str(REPO / "examples" / "data" / "demo.jsonl"),
           "format": "chat", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": 30, "learning_rate": 0.003, "batch_size": 4, "max_seq_len": 128, "save_steps": 10},
           "inference": {"service": "vllm", "mode": "stop", "health_url": "http://127.0.0.1:8000",
                         "model_name": "tiny-chat", "health_timeout_s": 240},
           "output": {"fetch": "adapter"}}
    path = folder / "job.yaml"
    path.write_text(json.dumps(job))
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """One HOME and ledger for the module: the session trained first is served by the later tests."""
    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("RUNNER_DATA_DIR", str(home / "data"))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield home


@pytest.fixture(scope="module")
def uploaded(provisioned, hosts, tiny_model, tmp_path_factory) -> str:
    """A finished session's folder on th1 with a PEFT adapter made here (trainer-independent); its id."""
    folder = tmp_path_factory.mktemp("uploaded") / "U1"
    # Its own process: torch's compiler does not import after ansible has patched sys.intern in this one
    subprocess.run([sys.executable, "-c", "import sys; from adapters import make_adapter; from pathlib import Path; "
                    "make_adapter(Path(sys.argv[1]), Path(sys.argv[2]))", str(tiny_model),
                    str(folder / "output" / "adapter")], check=True, cwd=Path(__file__).parent)
    (folder / "job.json").write_text(json.dumps({"spec": {"method": "lora"},
                                                 "paths": {"model": "/opt/models/tiny-chat"}}))
    packed = base64.b64encode(subprocess.run(["tar", "czf", "-", "-C", str(folder.parent), "U1"],
                                             capture_output=True, check=True).stdout).decode()
    hosts["th1"].ssh(f"mkdir -p {SESSIONS} && echo {packed} | base64 -d | tar xzf - -C {SESSIONS}")
    hosts["th1"].serve_vllm()
    return "U1"


def serve(inventory, *args: str, cwd: Path):
    started = time.monotonic()
    result = run_runner("serve", *args, "-i", str(inventory.path), "--hosts", "th1", cwd=cwd, timeout=900)
    print(f"runner serve {' '.join(args)}: rc {result.returncode} in {time.monotonic() - started:.0f} s\n"
          f"{result.stdout}{result.stderr}")
    return result


def complete(host, model: str) -> tuple[int, str]:
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}).encode()
    request = urllib.request.Request(host.url("/v1/completions"), data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["choices"][0]["text"]
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def listed(inventory, cwd: Path) -> dict:
    result = run_runner("serve", "--list", "--json", "-i", str(inventory.path), "--hosts", "th1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["th1"]


def copy_session(host, session: str, suffix: str, python_edit: str) -> str:
    """A copy of SESSION on the host (ledger-free: runner serve needs only the host folder), edited."""
    copy = f"{session}-{suffix}"
    adapter = f"{SESSIONS}/{copy}/output/adapter"
    host.ssh(f"rm -rf {SESSIONS}/{copy} && cp -a {SESSIONS}/{session} {SESSIONS}/{copy} && "
             f"{HOST_PYTHON} -c '{python_edit}' {adapter}")
    return copy


def serve_copy(inventory, session: str, cwd: Path, *args: str):
    """runner serve for a host-only session copy: the ledger gets an entry pointing at th1."""
    import runner.ledger as ledger

    ledger.record(ledger.Entry(session, ["th1"], "copy", str(inventory.path), time.time(), str(cwd)))
    return serve(inventory, session, *args, cwd=cwd)


RANK_600 = ("import json,sys; p=sys.argv[1]+\"/adapter_config.json\"; c=json.load(open(p)); "
            "c[\"rank_pattern\"]={\"q_proj\": 600}; json.dump(c, open(p, \"w\"))")
# Passes the config, file and base checks, but the tensors do not fit the model (vLLM would serve it anyway)
WRONG_SHAPES = ("import sys; from safetensors.torch import load_file, save_file; "
                "p=sys.argv[1]+\"/adapter_model.safetensors\"; t=load_file(p); "
                "save_file({k: (v[:, :64].contiguous() if \"lora_A\" in k else v) for k, v in t.items()}, p)")


def test_broken_adapters_are_refused_or_rolled_back_and_the_base_is_healthy(uploaded, inventory, hosts, place):
    th1 = hosts["th1"]
    before = th1.ssh(f"cat {DROPIN} 2>/dev/null; systemctl show -p MainPID --value vllm").stdout

    refused = serve_copy(inventory, copy_session(th1, uploaded, "r600", RANK_600), place)
    assert refused.returncode == 3 and "rank 600" in refused.stderr and "--merge" in refused.stderr
    assert th1.ssh(f"cat {DROPIN} 2>/dev/null; systemctl show -p MainPID --value vllm").stdout == before

    shapes = serve_copy(inventory, copy_session(th1, uploaded, "shapes", WRONG_SHAPES), place, "--name", "broken")
    assert shapes.returncode == 3 and "trained on another model" in shapes.stderr, shapes.stderr
    assert th1.ssh(f"cat {DROPIN} 2>/dev/null; systemctl show -p MainPID --value vllm").stdout == before

    # A new configuration that fails its health gate (vLLM cannot be healthy within 2 s): rolled back
    slow = serve_copy(inventory, uploaded, place, "--name", "broken", "--health-timeout", "2")
    assert slow.returncode == 1 and "rolled back" in slow.stderr, slow.stderr
    assert th1.ssh(f"test -e {DROPIN} && echo present || echo absent").stdout.strip() == "absent"
    assert complete(th1, "tiny-chat")[0] == 200
    assert complete(th1, "broken")[0] == 404
    now = listed(inventory, place)
    assert now["mode"] == "base" and now["healthy"] and now["adapters"] == []


def test_serve_the_adapter_it_answers_differently_from_the_base(uploaded, inventory, hosts, place):
    th1 = hosts["th1"]
    result = serve_copy(inventory, uploaded, place, "--name", "tuned")
    assert result.returncode == 0, result.stderr
    assert "rank 8 -> --max-lora-rank 8" in result.stdout
    base_code, base_text = complete(th1, "tiny-chat")
    tuned_code, tuned_text = complete(th1, "tuned")
    print(f"base: {base_text!r}; tuned: {tuned_text!r}")
    assert base_code == tuned_code == 200 and base_text != tuned_text
    now = listed(inventory, place)
    assert now["mode"] == "adapter" and now["session"] == uploaded and now["healthy"]
    assert [a["name"] for a in now["adapters"]] == ["tuned"] and now["max_lora_rank"] == "8"
    user = th1.ssh("stat -c %U /var/lib/gpu-runner/serve/*/adapter/adapter_model.safetensors; "
                   "su -s /bin/sh serve -c 'cat /var/lib/gpu-runner/serve/*/adapter/adapter_config.json' >/dev/null "
                   "&& echo readable").stdout
    assert "readable" in user
    assert "ExecStart=\n" in th1.ssh(f"cat {DROPIN}").stdout
    assert th1.ssh("grep -c gpu-runner /etc/systemd/system/vllm.service || true").stdout.strip() == "0"


def test_serve_it_merged_it_answers_like_the_adapter(uploaded, inventory, hosts, place):
    th1 = hosts["th1"]
    tuned = complete(th1, "tuned")
    result = serve_copy(inventory, uploaded, place, "--merge", "--name", "merged")
    assert result.returncode == 0, result.stderr
    merged = complete(th1, "merged")
    print(f"adapter: {tuned!r}; merged: {merged!r}")
    assert merged == tuned  # greedy: base + adapter, merged or not, gives the same tokens
    assert complete(th1, "tuned")[0] == 404 and complete(th1, "tiny-chat")[0] == 404
    now = listed(inventory, place)
    assert now["mode"] == "merged" and now["model"].endswith("/merged") and now["names"] == ["merged"]
    assert th1.ssh(f"ls /var/lib/gpu-runner/serve/{uploaded}").stdout.split() == ["merged"]


def test_revert_goes_back_to_the_base(uploaded, inventory, hosts, place):
    th1 = hosts["th1"]
    result = run_runner("serve", "--revert", "-i", str(inventory.path), "--hosts", "th1", cwd=place, timeout=900)
    assert result.returncode == 0, result.stderr
    assert complete(th1, "tiny-chat")[0] == 200
    now = listed(inventory, place)
    assert now["mode"] == "base" and now["names"] == ["tiny-chat"] and now["healthy"]
    assert th1.ssh(f"ls -A /var/lib/gpu-runner/serve; test -e {DROPIN} || echo no-dropin").stdout.strip() == \
        "no-dropin"
    again = run_runner("serve", "--revert", "-i", str(inventory.path), "--hosts", "th1", cwd=place)
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_train_the_demo_then_serve_it(provisioned, inventory, hosts, place):
    th1 = hosts["th1"].serve_vllm()
    started = time.monotonic()
    trained = run_runner("train", str(job_file(place)), "-i", str(inventory.path), "--hosts", "th1", cwd=place,
                         timeout=900)
    assert trained.returncode == 0, trained.stderr
    session = th1.ssh(f"ls -t {SESSIONS} | head -1").stdout.strip()
    print(f"train on th1: {time.monotonic() - started:.0f} s")
    result = serve(inventory, session, cwd=place)
    assert result.returncode == 0, result.stderr
    base, tuned = complete(th1, "tiny-chat"), complete(th1, f"ft-{session}")
    print(f"base: {base!r}; trained adapter: {tuned!r}")
    assert base[0] == tuned[0] == 200 and base[1] != tuned[1]
    assert run_runner("serve", "--revert", "-i", str(inventory.path), "--hosts", "th1", cwd=place,
                      timeout=900).returncode == 0
