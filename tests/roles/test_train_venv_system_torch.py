"""train_venv_system_torch on localhost: an image's own venv (torch preinstalled, pip but no pip script) becomes the
training venv offline, from a wheelhouse of the listed packages alone; a venv that sees no torch is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

PLAY = "- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: train_venv\n"


def _image_venv(path: Path, with_torch: bool) -> Path:
    """A venv made the way images ship one: no pip script; torch (and pip) from this interpreter's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next((path / "lib").glob("python3*/site-packages"))
    if with_torch:
        (site / "zz-image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin" / "python"


def _probe_wheel(folder: Path) -> None:
    """A one-module package, built here: what the image lacks and the wheelhouse carries."""
    src = folder / "src"
    src.mkdir(parents=True)
    (src / "e2e_probe.py").write_text("ANSWER = 42\n")
    (src / "pyproject.toml").write_text(
        '[project]\nname = "e2e-probe"\nversion = "1.0"\n[build-system]\nrequires = ["setuptools"]\n'
        'build-backend = "setuptools.build_meta"\n[tool.setuptools]\npy-modules = ["e2e_probe"]\n')
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(folder / "wheels"), str(src)], check=True)


@pytest.fixture(scope="module")
def probe_wheels(tmp_path_factory) -> Path:
    """The folder holding the e2e-probe wheel, built once for the module."""
    folder = tmp_path_factory.mktemp("probe")
    _probe_wheel(folder)
    return folder / "wheels"


def _setup_venv(tmp_path: Path, venv: Path, wheels: Path) -> subprocess.CompletedProcess:
    (tmp_path / "play.yml").write_text(PLAY)
    extravars = {
        "ansible_python_interpreter": sys.executable, "train_venv_repo": str(REPO),
        "train_venv_root": str(tmp_path / "root"), "train_venv_path": str(venv),
        "train_venv_system_torch": True, "train_venv_source": "wheelhouse", "train_venv_torch_variant": "cpu",
        "train_venv_packages": ["e2e-probe==1.0"], "train_venv_cuda_packages": [],
        "train_venv_pip_args": ["--no-index", "--find-links", str(wheels)],
        "train_venv_wheelhouse_cache": str(tmp_path / "cache")}
    (tmp_path / "vars.json").write_text(json.dumps(extravars))
    tool = Path(sys.executable).parent / "ansible-playbook"
    return subprocess.run([str(tool), "-i", "localhost,", "-c", "local", "-e", f"@{tmp_path / 'vars.json'}",
                           str(tmp_path / "play.yml")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                               "ANSIBLE_ROLES_PATH": str(REPO / "roles")})


def test_image_venv_becomes_the_training_venv_without_downloading_torch(tmp_path, probe_wheels):
    python = _image_venv(tmp_path / "image", with_torch=True)
    run = _setup_venv(tmp_path, tmp_path / "image", probe_wheels)
    assert run.returncode == 0, run.stdout[-3000:]
    marker = json.loads((tmp_path / "image" / "gpu-runner-install.json").read_text())
    assert marker["requirements"] == ["e2e-probe==1.0"]  # no torch pin, nothing of the index
    (wheelhouse,) = (tmp_path / "cache").glob("*/wheelhouse.tar")
    listing = subprocess.run(["tar", "-tf", str(wheelhouse)], capture_output=True, text=True, check=True).stdout
    assert [n for n in listing.split() if n.endswith(".whl")] == ["wheelhouse/e2e_probe-1.0-py3-none-any.whl"]
    seen = subprocess.run([str(python), "-c", "import e2e_probe, runner, torch, sys; "
                           "print(e2e_probe.__file__, runner.__file__, torch.__version__)"],
                          capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert seen[0].startswith(str(tmp_path / "image")) and seen[1].startswith(str(tmp_path / "image"))
    assert seen[2] == subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                     capture_output=True, text=True, check=True).stdout.strip()


def test_a_venv_that_sees_no_torch_is_refused(tmp_path, probe_wheels):
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "bare")], check=True)  # pip, but no torch
    run = _setup_venv(tmp_path, tmp_path / "bare", probe_wheels)
    assert run.returncode != 0
    assert "train_venv_system_torch: " + str(tmp_path / "bare") + " sees no torch" in run.stdout, run.stdout[-3000:]
