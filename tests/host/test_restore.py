"""The restore's health gate asks for the model the host serves now."""

import json

from runner.host import restore, serve


def test_a_merged_model_being_served_replaces_the_jobs_name(tmp_path, monkeypatch):
    record = tmp_path / "serving.json"
    monkeypatch.setattr(serve, "RECORD", record)
    assert restore.served_name("tiny-chat") == "tiny-chat"  # nothing served by runner serve
    record.write_text(json.dumps({"mode": "adapter", "name": "tuned"}))
    assert restore.served_name("tiny-chat") == "tiny-chat"  # adapters are served beside the base
    record.write_text(json.dumps({"mode": "merged", "name": "merged"}))
    assert restore.served_name("tiny-chat") == "merged"
