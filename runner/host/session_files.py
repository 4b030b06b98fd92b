"""The names in a host's training root and session folders, in one place: the supervisor, the trainer's launch,
the commands Ansible runs, clean, serve, and the control side reading fetched results all use these.

<root>/session.lock                  the host lock (one session at a time)
<root>/sessions/<id>/job.json        the job as staged: spec, paths, base model name
                     status.json     the supervisor's record: phases, step, loss, pace, restore, summary
                     STOP            a stop request ('runner stop', Ctrl-C, a peer; the text says why)
                     GO              multi-node: every host is ready, train
                     metrics.jsonl   the trainer's records; train.log its output; telemetry.jsonl the GPUs'
"""

from __future__ import annotations

from pathlib import Path

LOCK = "session.lock"
SESSIONS = "sessions"
JOB = "job.json"
STATUS = "status.json"
STOP = "STOP"
GO = "GO"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
TELEMETRY = "telemetry.jsonl"
SUPERVISOR_LOG = "supervisor.log"


def lock_of(session_dir: Path) -> Path:
    """<root>/session.lock of <root>/sessions/<id>."""
    return session_dir.parent.parent / LOCK
