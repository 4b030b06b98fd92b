"""Host housekeeping as a user meets it: sessions of one local model share one copy on the host, and
`runner clean` frees it once no session needs it, keeps results, and refuses a running session."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, run_runner

from runner import digest, ledger
from runner.host.lock import HostLock

DEMO = str(REPO / "examples" / "demo.yaml")
SHORT = ("--set", "train.max_steps=6", "--set", "train.save_steps=3")


def session_of(result: subprocess.CompletedProcess | str) -> str:
    text = result if isinstance(result, str) else result.stderr
    return next(line.split()[1] for line in text.splitlines() if line.startswith("session "))


def wait_for(predicate, timeout: float = 300, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def step_of(session_dir: Path) -> int:
    try:
        return json.loads((session_dir / "status.json").read_text()).get("step") or 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def weights_on_host(root: Path) -> list[Path]:
    """Every copy of the model's weights under the training root (links not followed)."""
    return [p for p in root.rglob("model.safetensors") if not p.is_symlink()]


def staged(root: Path, session: str) -> dict:
    """What a session's staging left on the host: its model link and dataset, and the shared copies."""
    session_dir = root / "sessions" / session
    return {"model": str(Path(session_dir / "model").readlink()), "data": sorted(p.name for p in (session_dir /
            "data").iterdir()), "models": sorted(p.name for p in (root / "models").iterdir())}


@pytest.mark.slow
def test_sessions_share_one_model_copy_and_clean_frees_it_but_never_a_running_session(home, tiny_model):
    root = home / "training"
    first, second = (run_runner("train", DEMO, *SHORT) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    s1, s2 = session_of(first), session_of(second)
    links = [(root / "sessions" / s / "model") for s in (s1, s2)]
    assert all(link.is_symlink() for link in links) and links[0].resolve() == links[1].resolve()
    assert [p.parent for p in weights_on_host(root)] == [links[0].resolve()]  # the model once on the host

    cleaned = run_runner("clean", s2)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"localhost: session {s2}: " in cleaned.stdout and "output/checkpoint-" in cleaned.stdout
    assert "shared model" not in cleaned.stdout and len(weights_on_host(root)) == 1  # s1 still links to it

    runner = str(Path(sys.executable).parent / "runner")
    log = home / "third.log"
    with log.open("w") as out:
        third = subprocess.Popen([runner, "train", DEMO, "--set", "train.max_steps=400", "--set",
                                  "train.save_steps=5"], stdout=out, stderr=out, start_new_session=True)
    try:
        s3 = wait_for(lambda: "session " in log.read_text() and session_of(log.read_text()))
        wait_for(lambda: step_of(root / "sessions" / s3) >= 2)
        before = staged(root, s3)
        refused = run_runner("clean", s3)
        assert refused.returncode == 3
        assert refused.stderr.strip().splitlines() == [
            f"Error: localhost: session {s3} is running on this host; stop it with 'runner stop {s3}' or wait for "
            "it to end. Nothing was removed."]
        older = run_runner("clean", "--older-than", "0")
        assert older.returncode == 0, older.stderr
        assert f"session {s1}:" in older.stdout and f"session {s3}" not in older.stdout
        assert staged(root, s3) == before and len(weights_on_host(root)) == 1  # the running session's copy
        assert step_of(root / "sessions" / s3) >= 2
    finally:
        stopped = run_runner("stop", s3)
        third.wait(timeout=300)
    assert stopped.returncode == 130, stopped.stderr

    dry = run_runner("clean", s3, "--dry-run")
    assert "would free" in dry.stdout and len(weights_on_host(root)) == 1
    last = run_runner("clean", s3)
    assert last.returncode == 0, last.stderr
    assert "localhost: shared model tiny-chat" in last.stdout and "no session uses it" in last.stdout
    assert weights_on_host(root) == [] and [p for p in (root / "models").iterdir() if p.name != ".lock"] == []
    freed = int(last.stdout.split("localhost: freed ")[1].split()[0].replace(",", ""))
    assert freed >= (tiny_model / "model.safetensors").stat().st_size
    for session in (s1, s2, s3):  # results stay: in the run folder and on the host
        assert (home / "runs" / session / "localhost" / "status.json").exists()
        assert (root / "sessions" / session / "status.json").exists()
        assert (root / "sessions" / session / "model" / "config.json").exists()  # the stub `runner serve` reads
    for session in (s1, s2):  # s3 was stopped before it wrote one
        assert (root / "sessions" / session / "output" / "adapter" / "adapter_model.safetensors").exists()
    assert (home / "runs" / s1 / "localhost" / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads(run_runner("status", "--json").stdout)[-1]["outcome"] == "interrupted"


@pytest.mark.slow
def test_retention_zero_drops_the_staged_copy_as_the_session_ends(home, tiny_model):
    """train_session_keep_days from the inventory: 0 leaves no model on the host once the session ended."""
    inventory = home / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable} "
                         f"train_session_python={sys.executable} train_session_keep_days=0\n")
    done = run_runner("train", DEMO, *SHORT, "-i", str(inventory))
    assert done.returncode == 0, done.stderr
    session_dir = home / "training" / "sessions" / session_of(done)
    assert weights_on_host(home / "training") == [] and not (session_dir / "data").exists()
    assert (session_dir / "model" / "config.json").exists() and not (session_dir / "model").is_symlink()
    assert list((session_dir / "output").glob("checkpoint-*"))  # retention keeps what a resume needs
    assert (home / "runs" / session_of(done) / "localhost" / "adapter" / "adapter_model.safetensors").exists()


def fake_session(root: Path, session: str) -> Path:
    """A finished session's folder as staging and the trainer leave it (a dataset, a checkpoint, results)."""
    session_dir = root / "sessions" / session
    for name in ("data", "output/checkpoint-5", "output/adapter"):
        (session_dir / name).mkdir(parents=True)
    (session_dir / "data" / "train.jsonl").write_text('{"text": "hi"}\n' * 1000)
    (session_dir / "output" / "checkpoint-5" / "optimizer.pt").write_bytes(b"o" * 100_000)
    (session_dir / "job.json").write_text(json.dumps({"paths": {"model": "/opt/m", "dataset": "data/train.jsonl"}}))
    (session_dir / "status.json").write_text(json.dumps({"outcome": "interrupted", "ended": time.time() - 60}))
    return session_dir


def test_a_session_running_on_one_of_its_hosts_is_refused_with_nothing_removed_on_any(home):
    """Two hosts (two roots on this machine): the session was resumed on b and runs there."""
    python = sys.executable
    inventory = home / "two.ini"
    inventory.write_text("".join(f"{h} ansible_connection=local ansible_python_interpreter={python} "
                                 f"train_session_python={python} train_session_root={home}/{h}\n" for h in "ab"))
    dirs = {h: fake_session(home / h, "S1") for h in "ab"}
    ledger.record(ledger.Entry("S1", ["a", "b"], str(home / "job.yaml"), str(inventory), time.time(), str(home)))
    before = {h: sorted(p.relative_to(d) for p in d.rglob("*")) for h, d in dirs.items()}
    with HostLock(home / "b" / "session.lock", "S1"):
        refused = run_runner("clean", "S1")
    assert refused.returncode == 3
    assert refused.stderr.strip().splitlines() == [
        "Error: b: session S1 is running on this host; stop it with 'runner stop S1' or wait for it to end. "
        "Nothing was removed."]
    assert {h: sorted(p.relative_to(d) for p in d.rglob("*")) for h, d in dirs.items()} == before

    cleaned = run_runner("clean", "S1")
    assert cleaned.returncode == 0, cleaned.stderr
    for host, session_dir in dirs.items():
        assert f"{host}: session S1: data/, output/checkpoint-5/ (" in cleaned.stdout
        assert not (session_dir / "data").exists() and (session_dir / "output" / "adapter").is_dir()
        assert not (home / host / "models").exists()


def test_clean_needs_a_session_or_an_age(home):
    assert run_runner("clean").returncode == 2
    bad = run_runner("clean", "--older-than", "7x")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "Error: --older-than 7x: give an age such as 7d, 12h or 30m (a bare number is days)."]
    unknown = run_runner("clean", "nope")
    assert unknown.returncode == 2 and "no session 'nope'" in unknown.stderr


def test_model_digest_follows_content_not_place(tmp_path, home, monkeypatch):
    a, b = tmp_path / "a" / "m", tmp_path / "b" / "other"
    for folder in (a, b):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
    assert digest.folder_digest(a) == digest.folder_digest(b)  # the same files elsewhere: one copy on a host
    (b / "model.safetensors").write_bytes(b"w" * 999 + b"x")  # same size, one byte differs
    assert digest.folder_digest(a) != digest.folder_digest(b)

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(digest, "file_sha256", no_hashing)
    assert digest.folder_digest(a) == digest.folder_digest(a)  # unchanged files: hashes from the cache
