"""Host housekeeping: one shared copy of each uploaded model, retention, and `runner clean`.

An uploaded model lives once per host in <root>/models/<digest>/ (the digest is the controller's, from the
folder's file names, sizes and hashes); each session's `model` is a link to it. The links are the references:
a shared copy is removed when no session folder links to it any more, so the count is read, never kept.
<root>/models/<digest>.json marks a complete upload. Linking (staging) and removing shared copies hold
<root>/models/.lock, so a copy a session is being staged with is never removed under it.

What goes, never from a running session (the holder of <root>/session.lock):
  retention (end of every session)  staged inputs of sessions that ended over keep_days ago
  runner clean                      staged inputs and checkpoints; the results stay (status.json, logs,
                                    metrics, telemetry, job.json, output/adapter), so status, logs and serve work
A dropped model leaves a stub: its small non-weight files (config, tokenizer), for `runner serve --adapter`.

  python -m runner.host clean ROOT link  < {"session_id", "uploads"}   link to shared copies; uploads to do
  python -m runner.host clean ROOT seal  < {"uploads"}                 mark uploaded shared copies complete
  python -m runner.host clean ROOT retain < {"keep_days"}              apply the retention setting
  python -m runner.host clean ROOT clean < {"sessions" | "older_than_s", "dry_run"}   exit 3: refused
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runner.host import answers, lock
from runner.host import session_files as files
from runner.host.status import read_json, write_json
from runner.train.exits import EXIT_USAGE

DAY_S = 86400
STUB_MARKER = ".staged-copy-removed"  # in a session's model/ once its weights were dropped
# A stub keeps these: what identifies the model and its tokenizer, never weights
STUB_MAX_B = 64 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz")
KEPT_OUTPUT = "adapter"  # what `runner clean` keeps of output/


def disk_bytes(path: Path) -> int:
    """Bytes `path` takes on disk (each inode once; links are counted, not followed)."""
    if not path.is_symlink() and not path.exists():
        return 0
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirs, names in os.walk(path):
            paths += [Path(dirpath, name) for name in (*dirs, *names)]
    seen, total = set(), 0
    for entry in paths:
        st = entry.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# -- the shared store ---------------------------------------------------------------------------------------

def store(root: Path) -> Path:
    return root / "models"


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Held while linking to or removing shared copies (seconds, so waiting for it is fine)."""
    store(root).mkdir(parents=True, exist_ok=True)
    store(root).chmod(0o755)  # the trainer user reads the copies
    fd = os.open(store(root) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def link(root: Path, session_id: str, uploads: list[dict]) -> list[dict]:
    """Point the session's model at its shared copy; every upload with its absolute destination and whether it
    is on this host already (`present`: a sealed shared copy, nothing to send)."""
    session_dir = root / "sessions" / session_id
    answer = []
    with store_lock(root):
        for upload in uploads:
            dest = session_dir / upload["dest"]
            if "digest" not in upload:  # a session planned before the store: its own copy, as then
                answer.append({**upload, "dest": str(dest), "present": False})
                continue
            shared = store(root) / upload["digest"]
            shared.mkdir(exist_ok=True)
            shared.chmod(0o755)  # the trainer user reads it
            if dest.is_symlink() or dest.exists():
                remove(dest)  # a stub, or the link of an earlier try
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(os.path.relpath(shared, dest.parent))
            answer.append({**upload, "dest": str(shared), "present": sealed(root, upload["digest"])})
    return answer


def sealed(root: Path, digest: str) -> bool:
    return (store(root) / f"{digest}.json").exists()


def seal(root: Path, uploads: list[dict]) -> list[str]:
    """Mark the shared copies just uploaded complete; later sessions of the same model reuse them."""
    done = []
    for upload in uploads:
        digest = upload.get("digest")
        if digest and (store(root) / digest).is_dir() and not sealed(root, digest):
            write_json(store(root) / f"{digest}.json", {"name": Path(upload["src"].rstrip("/")).name,
                                                       "bytes": disk_bytes(store(root) / digest),
                                                       "sealed": time.time()})
            done.append(digest)
    return done


def references(root: Path, leaving: set[Path] = frozenset()) -> set[Path]:
    """The shared copies some session folder links to (`leaving`: links about to go, not counted)."""
    found = set()
    for session_dir in session_dirs(root):
        model = session_dir / "model"
        if model.is_symlink() and model not in leaving:
            found.add(Path(os.path.realpath(model)))
    return found


def unused_copies(root: Path, leaving: set[Path] = frozenset()) -> list[dict]:
    """Shared copies no session links to (after `leaving` went): name, digest and size."""
    if not store(root).is_dir():
        return []
    used = references(root, leaving)
    found = []
    for copy in sorted(p for p in store(root).iterdir() if p.is_dir()):
        if Path(os.path.realpath(copy)) not in used:
            found.append({"digest": copy.name, "name": read_json(store(root) / f"{copy.name}.json").get("name", "?"),
                          "bytes": disk_bytes(copy)})
    return found


def remove_unused_copies(root: Path) -> list[dict]:
    if not store(root).is_dir():
        return []  # a host without shared copies gets no store folder from cleaning
    with store_lock(root):  # no session links to a copy while we decide and remove
        gone = unused_copies(root)
        for copy in gone:
            (store(root) / f"{copy['digest']}.json").unlink(missing_ok=True)  # unsealed first: never half-trusted
            remove(store(root) / copy["digest"])
    return gone


# -- sessions -----------------------------------------------------------------------------------------------

def session_dirs(root: Path) -> list[Path]:
    sessions = root / "sessions"
    return sorted(p for p in sessions.iterdir() if p.is_dir()) if sessions.is_dir() else []


def running_session(root: Path) -> str | None:
    """The session that holds the host: running, or reserved and being staged."""
    holder = lock.current_holder(root / files.LOCK)
    return holder.get("session_id") if holder else None


def ended_at(session_dir: Path) -> float:
    """When the session ended: its status, else the last time its folder changed."""
    status = read_json(session_dir / files.STATUS)
    if status.get("ended"):
        return float(status["ended"])
    return max((session_dir / files.STATUS).stat().st_mtime if (session_dir / files.STATUS).exists() else 0,
               session_dir.stat().st_mtime)


def staged_inputs(session_dir: Path) -> list[Path]:
    """What staging uploaded into the session: its model (a link or a copy) and its data folder."""
    paths = read_json(session_dir / files.JOB).get("paths", {})
    found = []
    for what, value in paths.items():
        if not isinstance(value, str) or value.startswith(("/", "~")):
            continue  # a host path or a hub id: nothing of ours
        top = session_dir / Path(value).parts[0]
        if what == "model" and (top / STUB_MARKER).exists():
            continue  # dropped already
        if (top.is_symlink() or top.exists()) and top not in found:  # a dataset and an eval set share data/
            found.append(top)
    return found


def leftovers(session_dir: Path) -> list[Path]:
    """What `runner clean` removes besides staged inputs: checkpoints and the rest of output/, stray tarballs."""
    output = session_dir / "output"
    found = sorted(p for p in output.iterdir() if p.name != KEPT_OUTPUT) if output.is_dir() else []
    return found + sorted(session_dir.glob("results-*.tar.gz"))


def weightless(found: list[Path]) -> list[Path]:
    return [f for f in found if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.stat().st_size <= STUB_MAX_B]


def drop_model(model: Path) -> None:
    """Replace a staged model (a link to a shared copy, or a copy of its own) by its small non-weight files."""
    if model.is_symlink():
        kept = {f.name: f.read_bytes() for f in weightless(list(model.iterdir()))} if model.exists() else {}
        model.unlink()
        model.mkdir(mode=0o755)
        for name, data in kept.items():
            (model / name).write_bytes(data)
    else:
        for entry in model.iterdir():
            if entry not in weightless([entry]):
                remove(entry)
    (model / STUB_MARKER).write_text(json.dumps({"removed": time.time()}))


@dataclass
class Cleanup:
    """What goes from one session folder."""

    session_dir: Path
    paths: list[Path] = field(default_factory=list)

    def bytes(self) -> int:
        return sum(disk_bytes(p) for p in self.paths)

    def describe(self) -> dict:
        names = [p.relative_to(self.session_dir).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "")
                 for p in self.paths]
        return {"id": self.session_dir.name, "removed": names, "bytes": self.bytes()}

    def apply(self) -> None:
        for path in self.paths:
            if path.name == "model" and path.parent == self.session_dir:
                drop_model(path)
            else:
                remove(path)


def plan(root: Path, chosen: list[Path], everything: bool) -> list[Cleanup]:
    """Per session folder: its staged inputs, and with `everything` its checkpoints too."""
    return [Cleanup(d, staged_inputs(d) + (leftovers(d) if everything else [])) for d in chosen]


def run(root: Path, chosen: list[Path], everything: bool, dry_run: bool) -> dict:
    """Remove what `plan` says (unless `dry_run`), then every shared copy no session links to any more."""
    cleanups = [c for c in plan(root, chosen, everything) if c.paths]
    sessions = [c.describe() for c in cleanups]
    if dry_run:
        leaving = {p for c in cleanups for p in c.paths if p.name == "model" and p.is_symlink()}
        models = unused_copies(root, leaving)
    else:
        for cleanup in cleanups:
            cleanup.apply()
        models = remove_unused_copies(root)
    freed = sum(s["bytes"] for s in sessions) + sum(m["bytes"] for m in models)
    return {"sessions": sessions, "models": models, "freed_bytes": freed, "dry_run": dry_run,
            "changed": bool(freed or sessions or models) and not dry_run}


def finished(root: Path, older_than_s: float) -> list[Path]:
    """Session folders whose session ended more than `older_than_s` ago (the running one never)."""
    now, busy = time.time(), running_session(root)
    return [d for d in session_dirs(root) if d.name != busy and now - ended_at(d) > older_than_s]


class Refused(Exception):
    """A running session was named: nothing was removed."""


def clean(root: Path, request: dict) -> dict:
    """`runner clean`: named sessions (refused if one runs) or those ended over `older_than_s` ago."""
    if request.get("sessions") is not None:
        busy = running_session(root)
        if busy in request["sessions"]:
            raise Refused(f"session {busy} is running on this host; stop it with 'runner stop {busy}' or wait "
                          "for it to end")
        chosen = [root / "sessions" / s for s in request["sessions"] if (root / "sessions" / s).is_dir()]
        missing = [s for s in request["sessions"] if not (root / "sessions" / s).is_dir()]
    else:
        chosen, missing = finished(root, float(request["older_than_s"])), []
    return {**run(root, chosen, everything=True, dry_run=bool(request.get("dry_run"))), "missing": missing}


def retain(root: Path, keep_days: float) -> dict:
    """The retention setting, at the end of every session: older sessions lose their staged inputs."""
    return run(root, finished(root, keep_days * DAY_S), everything=False, dry_run=False)


def main(root: Path, action: str | None) -> int:
    request = json.loads(sys.stdin.read() or "{}")
    try:
        if action == "link":
            answer = {"uploads": link(root, request["session_id"], request["uploads"]), "changed": True}
        elif action == "seal":
            done = seal(root, request["uploads"])
            answer = {"sealed": done, "changed": bool(done)}
        elif action == "retain":
            answer = retain(root, float(request["keep_days"]))
        elif action == "clean":
            answer = clean(root, request)
        else:
            print(f"unknown clean action {action!r}; use link, seal, retain or clean", file=sys.stderr)
            return EXIT_USAGE
    except Refused as refusal:
        return answers.refuse(refusal)
    return answers.answer(answers.CLEAN_ACTIONS[action], answer)
