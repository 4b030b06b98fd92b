"""`runner status` of a finished session answers from the run folder (no round trip to the hosts, which took
~18 s), and `--json` says where each host got to: step, loss, pace, restore."""

import json
import time

from helpers import run_runner

from runner import ledger


def finished_session(home, outcome: str = "succeeded") -> ledger.Entry:
    run_dir = home / "runs" / "20261203-010203-abcd"
    (run_dir / "localhost").mkdir(parents=True)
    (run_dir / "localhost" / "status.json").write_text(json.dumps({
        "outcome": outcome, "phase": "train", "step": 40, "total_steps": 40, "loss": 4.953019,
        "avg_tokens_per_s": 384.1, "elapsed_s": 86.9, "eta_s": 0.0, "restore": {"ok": True}}))
    entry = ledger.Entry("20261203-010203-abcd", ["localhost"], str(home / "job.yaml"), None, time.time() - 300,
                         str(run_dir), outcome, time.time() - 100, {"localhost": outcome})
    ledger.record(entry)
    return entry


def test_a_finished_session_is_read_from_the_run_folder(home):
    entry = finished_session(home)
    shown = run_runner("status", entry.id)
    assert shown.returncode == 0, shown.stderr
    assert "20261203-010203-abcd" in shown.stdout  # whole, though stdout is not a terminal
    assert "localhost: succeeded in train, step 40/40, loss 4.9530, restore ok" in shown.stdout
    listed = json.loads(run_runner("status", entry.id, "--json").stdout)[0]
    assert (listed["step"], listed["total_steps"], listed["loss"]) == (40, 40, 4.953019)
    assert listed["by_host"]["localhost"] == {"outcome": "succeeded", "phase": "train", "step": 40, "total_steps": 40,
                                              "loss": 4.953019, "avg_tokens_per_s": 384.1, "elapsed_s": 86.9,
                                              "eta_s": 0.0, "restore_ok": True}
    assert not (home / "data" / "ansible").exists()  # no playbook ran: nothing was asked of the hosts
