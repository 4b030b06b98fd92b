"""The job spec: good specs load, every bad one is refused with exit 2 and one line naming the key."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_runner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.commands.train import stage
from runner.errors import UsageError
from runner.host.launch import trainer_config
from runner.inventory import load_inventory
from runner.spec import (
    ClusterSection,
    LoraSection,
    TrainSection,
    apply_override,
    load_spec,
    validate_spec,
)
from runner.train.config import ATTENTIONS, FORMATS, METHODS, parse_config

BAD = sorted((Path(__file__).parent / "bad_specs").glob("*.yaml"))


def expected(path: Path) -> str:
    """The '# expect:' first line (a folder in the corpus keeps it in EXPECT; bytes, as some are not UTF-8)."""
    source = path / "EXPECT" if path.is_dir() else path
    return source.read_bytes().decode("latin-1").splitlines()[0].removeprefix("# expect:").strip()


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


# -- the spec and the trainer agree (one list of values; what the laptop accepts, the trainer parses) ------------

# Values a key may take in the generated jobs: valid for some keys, edge cases for others
EDGE_VALUES = [None, True, False, "", "x", 0, 1, 2, -1, 16, 4096, 0.5, 1e-4, 1.5, math.inf, -math.inf, math.nan,
               2**32, [], ["q_proj", "v_proj"], [""], "all-linear", "flash", "flex", *ATTENTIONS, *FORMATS, *METHODS]


SPEC_KEYS = ["format", "method", "trust_remote_code",
             *(f"{name}.{key}" for name, model in (("lora", LoraSection), ("train", TrainSection),
                                                   ("cluster", ClusterSection)) for key in model.model_fields)]


def spec_strategy() -> st.SearchStrategy[dict]:
    """Raw job dicts: a minimal job with one to three keys set to an edge value (valid for some keys, not others)."""
    def job(changes: list[tuple[str, object]]) -> dict:
        data: dict = {"model": "org/model", "dataset": "data/d.jsonl"}
        for key, value in changes:
            section, _, name = key.rpartition(".")
            (data.setdefault(section, {}) if section else data)[name] = value
        return data

    return st.lists(st.tuples(st.sampled_from(SPEC_KEYS), st.sampled_from(EDGE_VALUES)), min_size=1,
                    max_size=3).map(job)


def as_trainer_config(spec, tmp_path: Path, multi_node: bool = False) -> dict:
    """What the host hands the trainer: launch.trainer_config on the staged job (a multi-node one where the spec
    has a cluster section), through train.json."""
    job = {"session_id": "s1", "spec": spec.model_dump(), "paths": {"model": "/m", "dataset": "/d.jsonl"},
           **({"cluster": {"num_machines": 2, "machine_rank": 0}} if multi_node else {})}
    return json.loads(json.dumps(trainer_config(job, tmp_path)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=spec_strategy())
def test_every_spec_the_laptop_accepts_the_trainer_parses(tmp_path, raw):
    try:
        spec = validate_spec(raw)
    except UsageError:
        return
    parse_config(as_trainer_config(spec, tmp_path, "cluster" in raw))  # raises ConfigError on disagreement


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_become_trainer_configs(example, tmp_path):
    parse_config(as_trainer_config(load_spec(example), tmp_path))


@pytest.mark.parametrize(("key", "values"), [("train.attention", ATTENTIONS), ("format", FORMATS),
                                             ("method", METHODS)])
def test_every_value_the_trainer_knows_the_spec_accepts(key, values):
    for value in values:
        data = {"model": "m", "dataset": "d", "train": {"packing": True}}
        apply_override(data, f"{key}={value}")
        assert validate_spec(data) is not None


def test_spec_loads_without_torch():
    code = ("import sys, runner.spec, runner.dataset; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
