"""Content digests of local model folders: the key of a host's shared model store (<root>/models/<digest>/).

The digest covers every file's relative name, size and SHA-256, so the same files share one copy on a host
wherever they lie on the controller, and a changed file gets a copy of its own. Hashing a 48 GB model reads it
once (the upload reads it anyway); later sessions reuse each file's hash from a cache keyed by the file's path
and stat. ctime is in the key: any write changes it and no user tool sets it, so a file written since is hashed
again even when its size and mtime were kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from rich.console import Console

from runner.paths import data_dir
from runner.train.hashing import file_sha256

NOTE_B = 1 << 30  # hashing more than this is said first: it takes a while
err = Console(stderr=True, soft_wrap=True)
DIGEST_CHARS = 32  # 128 bits of SHA-256: no two models collide; a short folder name on the host


def _cache_path() -> Path:
    return data_dir() / "digests.json"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save_cache(cache: dict) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests.", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(cache, out)
    os.replace(tmp, path)  # two runners at once: each writes whole files, the last one wins


def folder_digest(folder: Path) -> str:
    """The digest of everything an upload of `folder` copies (symlinked files count as their targets)."""
    cache = _load_cache()
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = cache.get(str(path.resolve()))
        files.append((path, stamp, known["sha256"] if known and known.get("stat") == stamp else None))
    to_hash_b = sum(stamp[0] for _, stamp, sha in files if sha is None)
    if to_hash_b >= NOTE_B:
        err.print(f"hashing {folder} ({to_hash_b / 2**30:.1f} GiB) once: the hosts keep one copy per model; "
                  "later sessions reuse the hash", markup=False)
    lines = []
    for path, stamp, known_sha in files:
        sha = known_sha or file_sha256(path)
        cache[str(path.resolve())] = {"stat": stamp, "sha256": sha}
        lines.append(f"{path.relative_to(folder).as_posix()}\0{stamp[0]}\0{sha}")
    _save_cache({k: v for k, v in cache.items() if os.path.exists(k)})  # files gone since are forgotten
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:DIGEST_CHARS]


def with_digests(uploads: list[dict]) -> list[dict]:
    """Uploads, a model folder's with the digest its shared copy on the host is stored under."""
    return [{**u, "digest": folder_digest(Path(u["src"]))} if u["dest"] == "model" else u for u in uploads]
