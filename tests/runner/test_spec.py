"""The job spec: good specs load, every bad one is refused with exit 2 and one line naming the key."""

from pathlib import Path

import pytest
from helpers import REPO, run_runner

from runner.commands.train import stage
from runner.errors import UsageError
from runner.inventory import load_inventory
from runner.spec import apply_override, load_spec, validate_spec

BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


def expected(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect:").strip()


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example):
    spec = load_spec(example)
    assert spec.lora.alpha > 0


def test_defaults_fill_in():
    spec = validate_spec({"model": "m", "dataset": "d"})
    assert spec.method == "lora" and spec.lora.alpha == 2 * spec.lora.rank
    assert spec.train.packing == "auto" and spec.inference.service is None


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_is_one_line_naming_the_problem(path):
    with pytest.raises(UsageError) as err:
        stage(load_spec(path), path, load_inventory(None))  # a bad local path is found while staging
    assert expected(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_override_is_validated_like_the_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: m\ndataset: d\n")
    assert load_spec(job, ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
    assert load_spec(job, ["power.limit_w=300"]).power.limit_w == 300
    with pytest.raises(UsageError, match=r"train\.learning_rate"):
        load_spec(job, ["train.learning_rate=abc"])
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        load_spec(job, ["train.learning_rate"])


def test_override_cannot_descend_into_a_value():
    with pytest.raises(UsageError, match="not a section"):
        apply_override({"model": "m"}, "model.name=x")


def test_cli_bad_override_exits_2_with_one_line(home):
    result = run_runner("train", str(REPO / "examples" / "demo.yaml"), "--set", "train.learning_rate=abc")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.learning_rate" in lines[0]
    assert not (home / "training").exists()


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_cli_bad_spec_exits_2_and_touches_nothing(home, path):
    result = run_runner("train", str(path))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert expected(path) in result.stderr
    assert not (home / "training").exists() and not (home / "runs").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--hosts", "nosuch"], "unknown host 'nosuch'"),
    (["-i", "no-such-inventory.ini"], "no such inventory"),
    (["--multi-node"], "--multi-node needs at least two hosts (got localhost)"),
])
def test_cli_bad_hosts_or_inventory_exit_2(home, args, message):
    result = run_runner("train", str(REPO / "examples" / "demo.yaml"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
