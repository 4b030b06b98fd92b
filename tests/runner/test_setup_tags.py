"""`runner setup --tags PARTS`: the parts of setup.yml a user can pick, as Ansible itself lists them."""

import subprocess
import sys
from pathlib import Path

from helpers import REPO, run_runner

from runner.commands.setup import TAGS

PLAYBOOK = REPO / "playbooks" / "setup.yml"


def listed_tasks(*args: str) -> list[str]:
    """'role : task' lines of `ansible-playbook --list-tasks`, without the argument-spec checks."""
    tool = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run([str(tool), "-i", "localhost,", str(PLAYBOOK), "--list-tasks", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [line.strip().split("\tTAGS:")[0] for line in done.stdout.splitlines() if "\tTAGS:" in line]
    return [line for line in lines if " : " in line and "Validating arguments" not in line]


def roles(tasks: list[str]) -> set[str]:
    return {task.split(" : ")[0] for task in tasks}


def test_each_part_selects_its_roles_and_the_facts_every_part_reads():
    everything = listed_tasks()
    for tag, wanted in (("power", {"gpu_power"}), ("venv", {"train_venv"}), ("accelerate", {"accelerate_config"}),
                        ("units", {"session_unit"}), ("inference", {"inference_server"})):
        tasks = listed_tasks("--tags", tag)
        assert roles(tasks) == {"gpu_facts", "train_venv"} | wanted, (tag, tasks)
        assert len(tasks) < len(everything)
    power = listed_tasks("--tags", "power")
    assert not [t for t in power if t.startswith("train_venv : ") and "venv" in t.lower().split(" : ")[1]
                and "Resolve" not in t and "Name the" not in t and "Look up" not in t]  # paths only, no install
    assert set(TAGS) == {"power", "venv", "accelerate", "units", "inference"}


def test_an_unknown_part_is_one_line_and_changes_nothing(home):
    done = run_runner("setup", "--tags", "powr")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: --tags: unknown part 'powr'; setup has: power, venv, accelerate, units, inference."]
    assert not (home / "data" / "ansible").exists()  # no playbook ran
