"""What a host command answers the controller, written and read in this one place.

An answer is one line of JSON on stdout whose key `gpu_runner` names what it is, beside its payload:

    {"gpu_runner": "status", "outcome": "running", "step": 12, ...}

The playbooks read the payload's keys as before (`stdout | from_json`); the controller picks an answer by its
tag (runner.playbook.host_answers), never by the name of the Ansible task that ran the command, so renaming a
task changes nothing the CLI reads. A refusal (nothing changed, exit 3) is instead the one line
`refused: <why>`, which reaches the controller as the failed task's last line.

The control side imports this module (deps go control -> host, never back); it imports only the exit codes.
"""

from __future__ import annotations

import json

from runner.train.exits import EXIT_OK, EXIT_REFUSED

TAG = "gpu_runner"

# Each tag names the host command (and action) that answers: `runner.host serve ROOT list` says "serve list"
PROBE = "probe"  # GPU facts, the host lock's holder, systemd
CHECK = "check"  # the preflight's findings: strategy, summary
RESERVE = "reserve"
RELEASE = "release"
STATUS = "status"  # the session's status.json and whether its supervisor lives, while following it
READY = "ready"  # the same, while a multi-node job waits for every host to be ready (before any trainer starts)
STOP = "stop"  # the status when the stop request was taken
LOG = "log"  # train.log from an offset
RESTORE = "restore"
PACK = "pack"  # the results tarball's path
POWER = "power"  # the limits a power profile enforced
SERVE_LIST, SERVE_APPLY, SERVE_REVERT = "serve list", "serve apply", "serve revert"
SERVE_ACTIONS = {"list": SERVE_LIST, "apply": SERVE_APPLY, "revert": SERVE_REVERT}  # the answer to each action
CLEAN_LINK, CLEAN_SEAL, CLEAN_RETAIN, CLEAN = "clean link", "clean seal", "clean retain", "clean"
CLEAN_ACTIONS = {"link": CLEAN_LINK, "seal": CLEAN_SEAL, "retain": CLEAN_RETAIN, "clean": CLEAN}
REPORT = "hosts report"  # playbooks/hosts.yml's debug message, tagged in the YAML the same way

REFUSED = "refused: "


def document(kind: str, payload: dict) -> str:
    """The answer line: PAYLOAD tagged as KIND."""
    if TAG in payload:
        raise ValueError(f"an answer's payload cannot hold the key {TAG!r}")
    return json.dumps({TAG: kind, **payload})


def answer(kind: str, payload: dict) -> int:
    """Print PAYLOAD as the command's answer; the exit code of a command that answered."""
    print(document(kind, payload), flush=True)
    return EXIT_OK


def refusal(why: object) -> str:
    """The refusal line: 'refused: <why>'."""
    return f"{REFUSED}{why}"


def refuse(why: object) -> int:
    """Print the refusal line; the exit code of a refused command (nothing changed)."""
    print(refusal(why), flush=True)
    return EXIT_REFUSED


def refused(line: str) -> str | None:
    """Why, if LINE (a failed task's last line) is a refusal; None for any other failure."""
    return line.removeprefix(REFUSED) if line.startswith(REFUSED) else None


def tagged(value: object, kinds: tuple[str, ...]) -> dict | None:
    """The payload of VALUE (a parsed JSON document, or a debug task's msg) if it is an answer tagged with one of
    KINDS; else None."""
    if isinstance(value, dict) and value.get(TAG) in kinds:
        return {key: item for key, item in value.items() if key != TAG}
    return None


def find(text: str, kinds: tuple[str, ...]) -> dict | None:
    """The payload of the last answer tagged with one of KINDS in a command's stdout (other lines: logs, warnings,
    untagged JSON, are passed over); None if there is none."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            found = tagged(json.loads(line), kinds)
        except json.JSONDecodeError:
            continue
        if found is not None:
            return found
    return None
