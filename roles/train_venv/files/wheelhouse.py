"""Controller side of the training venv: the runner source key, the cached wheelhouse, the runner wheel.

Run by the train_venv role on the controller (delegate_to: localhost):
  python wheelhouse.py key REPO                     {"runner_key", "runner_version"} of REPO's runner
  python wheelhouse.py deps CACHE KEY REQ... [-- PIP_ARGS...]
                                                    CACHE/KEY/wheelhouse.tar (pip download), built once
  python wheelhouse.py runner REPO OUT              OUT/<the runner wheel> (pip wheel --no-deps), its path
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# What goes into the runner wheel; a change to any of them is a new runner on the hosts
SOURCES = ("pyproject.toml", "runner")


def runner_key(repo: Path) -> dict:
    digest = hashlib.sha256()
    for top in SOURCES:
        paths = sorted(p for p in (repo / top).rglob("*") if p.is_file()) if (repo / top).is_dir() else [repo / top]
        for path in paths:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    version = {}
    exec((repo / "runner" / "__init__.py").read_text(), version)  # __version__ without importing runner
    return {"runner_key": digest.hexdigest()[:16], "runner_version": version.get("__version__", "?")}


def build_deps(cache: Path, key: str, reqs: list[str], pip_args: list[str]) -> Path:
    """pip download REQS (and their dependencies) into one tar, once per KEY."""
    dest = cache / key / "wheelhouse.tar"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wheels), *pip_args, *reqs],
                       check=True)
        (wheels / "requirements.txt").write_text("\n".join(reqs) + "\n")
        with tarfile.open(Path(tmp) / "wheelhouse.tar", "w") as tar:  # wheels are zips already: no gzip
            tar.add(wheels, arcname="wheelhouse")
        os.replace(Path(tmp) / "wheelhouse.tar", dest)  # only a finished wheelhouse has the final name
    return dest


def build_runner(repo: Path, out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as build:  # a copy: build/ and egg-info stay out of the repository
        for name in (*SOURCES, "README.md"):
            copy = shutil.copytree if (repo / name).is_dir() else shutil.copy2
            copy(repo / name, Path(build) / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out.resolve()), build], check=True)
    (wheel,) = out.glob("*.whl")
    return wheel


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "key":
        print(json.dumps(runner_key(Path(argv[1]))))
    elif len(argv) >= 4 and argv[0] == "deps":
        rest = argv[3:]
        reqs, pip_args = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (rest, [])
        print(build_deps(Path(argv[1]).expanduser(), argv[2], reqs, pip_args))
    elif len(argv) == 3 and argv[0] == "runner":
        print(build_runner(Path(argv[1]), Path(argv[2]).expanduser()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
