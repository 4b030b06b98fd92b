"""Host housekeeping on real folders: shared model copies, retention, and `clean` next to a live session lock."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.host import clean
from runner.train.exits import EXIT_REFUSED

WEIGHTS_B = 2 << 20


@pytest.fixture
def model(tmp_path) -> Path:
    """A model folder on the controller: config, tokenizer and 2 MiB of weights."""
    folder = tmp_path / "controller" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(WEIGHTS_B))
    return folder


def run_host(root: Path, action: str, request: dict) -> subprocess.CompletedProcess:
    """The host command as the playbooks run it."""
    return subprocess.run([sys.executable, "-m", "runner.host", "clean", str(root), action], input=json.dumps(request),
                          capture_output=True, text=True, timeout=60)


def stage(root: Path, session_id: str, model: Path, ended: float | None = None) -> Path:
    """What staging and a finished session leave: the model through the store, data, results, checkpoints."""
    uploads = [{"src": f"{model}/", "dest": "model", "digest": "d" * 32},
               {"src": str(model.parent / "train.jsonl"), "dest": "data/train.jsonl"}]
    session_dir = root / "sessions" / session_id
    (session_dir / "data").mkdir(parents=True)
    answer = run_host(root, "link", {"session_id": session_id, "uploads": uploads})
    assert answer.returncode == 0, answer.stderr
    for upload in json.loads(answer.stdout)["uploads"]:
        if upload["present"]:
            continue
        if upload["src"].endswith("/"):  # what ansible's copy does with a folder/ source
            shutil.copytree(upload["src"], upload["dest"], dirs_exist_ok=True)
        else:
            Path(upload["dest"]).write_text('{"text": "hi"}\n')
    assert run_host(root, "seal", json.loads(answer.stdout)).returncode == 0
    (session_dir / "job.json").write_text(json.dumps({"paths": {"model": "model", "dataset": "data/train.jsonl",
                                                                "eval.dataset": "data/eval-train.jsonl"}}))
    (session_dir / "output" / "adapter").mkdir(parents=True)
    (session_dir / "output" / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 4096)
    (session_dir / "output" / "checkpoint-5").mkdir()
    (session_dir / "output" / "checkpoint-5" / "optimizer.pt").write_bytes(os.urandom(1 << 20))
    for name in ("metrics.jsonl", "train.log", "telemetry.jsonl"):
        (session_dir / name).write_text("{}\n")
    (session_dir / "status.json").write_text(json.dumps({"outcome": "succeeded", "ended": ended or time.time()}))
    return session_dir


def tree(root: Path) -> dict[str, int]:
    """Every path under root with its size: a snapshot to compare."""
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1) for p in sorted(root.rglob("*"))}


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "training"


@pytest.fixture
def running(root):
    """A live session: another process holds the host lock, as the supervisor does."""
    holders = []

    def start(session_id: str) -> None:
        code = ("import sys, time; from pathlib import Path; from runner.host.lock import HostLock\n"
                f"with HostLock(Path({str(root / 'session.lock')!r}), {session_id!r}):\n"
                "    print('held', flush=True); time.sleep(600)")
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"

    yield start
    for proc in holders:
        proc.kill()
        proc.wait()


def test_two_sessions_of_one_model_share_one_copy(root, model):
    first = stage(root, "S1", model)
    second = stage(root, "S2", model)
    shared = root / "models" / ("d" * 32)
    assert (first / "model").is_symlink() and (second / "model").is_symlink()
    assert (first / "model").resolve() == (second / "model").resolve() == shared.resolve()
    assert (second / "model" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    assert WEIGHTS_B <= clean.disk_bytes(root / "models") < 2 * WEIGHTS_B  # the weights once on the host
    assert clean.disk_bytes(first / "model") + clean.disk_bytes(second / "model") < 64 << 10  # two links
    assert json.loads((root / "models" / f"{'d' * 32}.json").read_text())["name"] == "tiny"


def test_second_session_is_told_the_copy_is_there(root, model):
    stage(root, "S1", model)
    answer = run_host(root, "link", {"session_id": "S2", "uploads": [{"src": f"{model}/", "dest": "model",
                                                                      "digest": "d" * 32}]})
    assert json.loads(answer.stdout)["uploads"][0]["present"] is True


def test_an_unsealed_copy_is_uploaded_again(root, model):
    """An upload cut short (no seal) is not trusted: the next session sends the files again."""
    run_host(root, "link", {"session_id": "S1", "uploads": [{"src": f"{model}/", "dest": "model", "digest": "e" * 32}]})
    answer = run_host(root, "link", {"session_id": "S2", "uploads": [{"src": f"{model}/", "dest": "model",
                                                                      "digest": "e" * 32}]})
    assert json.loads(answer.stdout)["uploads"][0]["present"] is False


def test_retention_drops_old_staged_inputs_keeps_results_and_the_copy_in_use(root, model):
    old = stage(root, "S1", model, ended=time.time() - 10 * clean.DAY_S)
    recent = stage(root, "S2", model)
    answer = run_host(root, "retain", {"keep_days": 7})
    assert answer.returncode == 0, answer.stderr
    assert [s["id"] for s in json.loads(answer.stdout)["sessions"]] == ["S1"]
    assert not (old / "data").exists()
    assert not (old / "model").is_symlink() and (old / "model" / "config.json").exists()  # a stub for serve
    assert not (old / "model" / "model.safetensors").exists()
    for kept in ("status.json", "metrics.jsonl", "train.log", "output/adapter/adapter_model.safetensors",
                 "output/checkpoint-5/optimizer.pt"):  # results, and checkpoints for a resume
        assert (old / kept).exists(), kept
    assert (recent / "model" / "model.safetensors").exists()  # S2 still links to the shared copy

    answer = run_host(root, "retain", {"keep_days": 0})
    assert [m["digest"] for m in json.loads(answer.stdout)["models"]] == ["d" * 32]
    assert not (root / "models" / ("d" * 32)).exists() and not (root / "models" / f"{'d' * 32}.json").exists()
    assert (recent / "model" / "config.json").exists() and (recent / "output" / "adapter").exists()


def test_clean_named_session_removes_inputs_and_checkpoints_keeps_results(root, model):
    session = stage(root, "S1", model)
    before = tree(root)
    dry = run_host(root, "clean", {"sessions": ["S1"], "dry_run": True})
    assert tree(root) == before
    answer = run_host(root, "clean", {"sessions": ["S1"]})
    assert answer.returncode == 0, answer.stderr
    planned, done = json.loads(dry.stdout), json.loads(answer.stdout)
    assert planned["freed_bytes"] == done["freed_bytes"] >= WEIGHTS_B + (1 << 20)
    assert sorted(done["sessions"][0]["removed"]) == ["data/", "model", "output/checkpoint-5/"]
    assert not (session / "output" / "checkpoint-5").exists() and not (root / "models" / ("d" * 32)).exists()
    assert (session / "output" / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((session / "status.json").read_text())["outcome"] == "succeeded"
    again = json.loads(run_host(root, "clean", {"sessions": ["S1"]}).stdout)
    assert again["freed_bytes"] == 0 and again["sessions"] == []


def test_clean_of_the_running_session_is_refused_and_changes_nothing(root, model, running):
    stage(root, "S1", model)
    stage(root, "S2", model)
    running("S2")
    before = tree(root)
    answer = run_host(root, "clean", {"sessions": ["S1", "S2"]})
    assert answer.returncode == EXIT_REFUSED
    assert answer.stdout.strip().splitlines() == [
        "refused: session S2 is running on this host; stop it with 'runner stop S2' or wait for it to end"]
    assert tree(root) == before


def test_older_than_never_touches_the_running_session_or_its_model(root, model, running):
    old = stage(root, "S1", model, ended=time.time() - 3 * clean.DAY_S)
    live = stage(root, "S2", model, ended=time.time() - 3 * clean.DAY_S)  # an old session resumed: running again
    running("S2")
    answer = json.loads(run_host(root, "clean", {"older_than_s": 0}).stdout)
    assert [s["id"] for s in answer["sessions"]] == ["S1"] and answer["models"] == []
    assert not (old / "output" / "checkpoint-5").exists()
    assert (live / "model" / "model.safetensors").exists() and (live / "output" / "checkpoint-5").exists()
    assert json.loads(run_host(root, "retain", {"keep_days": 0}).stdout)["sessions"] == []


def test_a_session_being_staged_counts_as_running(root, model):
    from runner.host import lock

    stage(root, "S1", model)
    lock.reserve(root / "session.lock", "S1")  # a resume of S1 is staging
    assert run_host(root, "clean", {"sessions": ["S1"]}).returncode == EXIT_REFUSED
    assert (root / "sessions" / "S1" / "model" / "model.safetensors").exists()


def test_a_resumed_session_links_again_after_its_copy_was_dropped(root, model):
    session = stage(root, "S1", model)
    run_host(root, "clean", {"sessions": ["S1"]})
    answer = run_host(root, "link", {"session_id": "S1", "uploads": [{"src": f"{model}/", "dest": "model",
                                                                      "digest": "d" * 32}]})
    assert json.loads(answer.stdout)["uploads"][0]["present"] is False  # sent again
    assert (session / "model").is_symlink()


def test_a_session_staged_before_the_store_loses_its_own_copy(root, model):
    """A session folder with a whole model copy (staged before the shared store) is cleaned the same way."""
    session = root / "sessions" / "OLD"
    shutil.copytree(model, session / "model")
    (session / "job.json").write_text(json.dumps({"paths": {"model": "model", "dataset": "/data/x.jsonl"}}))
    (session / "status.json").write_text(json.dumps({"outcome": "failed", "ended": time.time()}))
    answer = json.loads(run_host(root, "clean", {"older_than_s": 0}).stdout)
    assert answer["freed_bytes"] >= WEIGHTS_B
    assert sorted(p.name for p in (session / "model").iterdir()) == [clean.STUB_MARKER, "config.json",
                                                                      "tokenizer_config.json"]


def test_a_cleaned_session_still_serves_its_adapter_on_the_same_model_and_refuses_a_merge(root, model):
    """The stub a dropped model leaves is what `runner serve` reads: the model's config, never its weights."""
    from runner.host import adapter_checks, served_files
    from runner.host.serve_errors import ServeRefused

    session = stage(root, "S1", model)
    run_host(root, "clean", {"sessions": ["S1"]})
    base = adapter_checks.trained_on(session, {})
    assert base == str(session / "model") and adapter_checks.same_model(base, str(model))
    with pytest.raises(ServeRefused, match=r"merge needs the base model's weights; .* has none here"):
        served_files.check_mergeable(adapter_checks.Adapter(session / "output" / "adapter", 8, 8, base, ()))
