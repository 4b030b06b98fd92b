"""The job spec: what a training session does, loaded from YAML and checked in full before any host is touched.

Every problem becomes one line that names the key and the fix, raised as UsageError (exit 2).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from runner.errors import UsageError
from runner.train.config import ATTENTIONS, FORMATS, MAX_SEED, METHODS, ConfigError, parse_config

Auto = Literal["auto"]
UUID_RE = re.compile(r"^GPU-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


class Section(BaseModel):
    """A part of the spec: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraSection(Section):
    rank: Annotated[int, Field(gt=0, le=1024)] = 16
    alpha: Annotated[float, Field(gt=0)] | None = None  # None: twice the rank
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: Literal["all-linear"] | list[str] = "all-linear"

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value):
        if isinstance(value, list) and (not value or not all(name.strip() for name in value)):
            raise ValueError("an empty list or name trains nothing; use 'all-linear' or name modules such as "
                             "[q_proj, v_proj]")
        return value


class TrainSection(Section):
    epochs: Annotated[float, Field(gt=0)] = 1
    max_steps: Annotated[int, Field(gt=0)] | None = None  # None: run the epochs
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 2e-4
    batch_size: Annotated[int, Field(gt=0)] | Auto = "auto"  # auto: sized from free GPU memory
    grad_accum: Annotated[int, Field(gt=0)] = 1
    max_seq_len: Annotated[int, Field(ge=16, le=131072)] = 2048
    packing: bool | Auto = "auto"
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    save_steps: Annotated[int, Field(gt=0)] = 50
    gradient_checkpointing: bool | Auto = "auto"  # auto: only when memory needs it
    liger: bool | Auto = "auto"
    compile: bool | Auto = "auto"
    attention: Literal[ATTENTIONS] = "auto"  # the trainer's own list (runner/train/config.py)


class PowerSection(Section):
    # Watts for every GPU, or a map GPU-UUID -> watts; None keeps the host's session profile.
    limit_w: Annotated[float, Field(gt=0)] | dict[str, Annotated[float, Field(gt=0)]] | None = None
    # The watchdog: too hot for too long, or repeated spikes above the limit, stops the trainer gracefully.
    max_temperature_c: Annotated[float, Field(gt=30, le=110)] = 87
    hot_grace_s: Annotated[float, Field(gt=0)] = 30
    spike_factor: Annotated[float, Field(gt=1)] = 1.5

    @field_validator("limit_w")
    @classmethod
    def _uuids_look_like_uuids(cls, value):
        if isinstance(value, dict):
            for key in value:
                if not UUID_RE.match(key):
                    raise ValueError(f"'{key}' is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx); "
                                     "'runner hosts' lists them")
        return value

    def limit_for(self, uuid: str) -> float | None:
        """The session limit in watts for one GPU, or None where the spec leaves it alone."""
        if isinstance(self.limit_w, dict):
            return self.limit_w.get(uuid)
        return self.limit_w


class InferenceSection(Section):
    service: str | None = None  # a systemd unit such as 'vllm'; None: no inference server on the host
    mode: Literal["stop", "none"] = "stop"
    health_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/.*)?$")] = "http://127.0.0.1:8000"
    model_name: str | None = None  # what /v1/models must list; None: any model
    health_timeout_s: Annotated[float, Field(gt=0)] = 300
    free_timeout_s: Annotated[float, Field(gt=0)] = 60  # how long the GPUs may take to empty

    @property
    def managed(self) -> bool:
        return self.service is not None and self.mode == "stop"


class ClusterSection(Section):
    """Multi-node jobs (`runner train --multi-node`): the rendezvous port and how long hosts wait for each other."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 29500  # on the first host's cluster address, during the job
    ready_timeout_s: Annotated[float, Field(gt=0)] = 1800  # every host capped and free within this, or nobody trains
    collective_timeout_s: Annotated[float, Field(gt=0)] = 600  # a lost peer ends the job after this


class EvalSection(Section):
    """Evaluation on held-out records or a separate file; the trainer's own checks apply (runner/train/config.py)."""

    split: Any = None  # records held out of the dataset: a fraction below 1 (0.1) or a whole count (50)
    dataset: Annotated[str, Field(min_length=1)] | None = None  # or a separate file, staged like the dataset
    every_steps: Annotated[int, Field(gt=0)] | None = None  # None: only at the end
    patience: Annotated[int, Field(gt=0)] | None = None  # evaluations without a lower loss, then stop early


class DataSourceSection(Section):
    """One dataset of a mix (dataset: a list): its share of the examples is weight / the sum of the weights."""

    path: Annotated[str, Field(min_length=1)]  # a local file or folder (uploaded), a host path or a dataset id
    weight: Annotated[float, Field(gt=0)] = 1
    format: Literal[FORMATS] | None = None  # None: the job's format


# A path or id, or a list of sources; the tags are the names describe_error leaves out of a key
Dataset = Annotated[
    Annotated[str, Field(min_length=1), Tag("str")]
    | Annotated[list[DataSourceSection], Field(min_length=1), Tag("list[sources]")],
    Discriminator(lambda value: "list[sources]" if isinstance(value, list) else "str"),
]


class SamplesSection(Section):
    """The base model's and the fine-tune's answers to held-out prompts at the end (runner/train/samples.py)."""

    count: Annotated[int, Field(ge=0, le=64)] = 4  # 0: off
    max_new_tokens: Annotated[int, Field(gt=0, le=4096)] = 128
    budget_s: Annotated[float, Field(gt=0, le=600)] = 60  # inference stays down meanwhile: the rest is left out


class OutputSection(Section):
    fetch: Literal["adapter", "all", "none"] = "adapter"


class JobSpec(Section):
    model: Annotated[str, Field(min_length=1)]
    dataset: Dataset
    format: Literal[FORMATS] = "auto"
    method: Literal[METHODS] = "lora"
    # auto: DDP where the base weights fit the smallest GPU, FSDP (pooled VRAM) where they do not
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    trust_remote_code: bool = False  # model repos can ship code; off unless the job says so
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    power: PowerSection = PowerSection()
    inference: InferenceSection = InferenceSection()
    output: OutputSection = OutputSection()
    cluster: ClusterSection = ClusterSection()
    eval: EvalSection | None = None  # None: no evaluation
    samples: SamplesSection = SamplesSection()

    @model_validator(mode="after")
    def _alpha_defaults_to_twice_rank(self):
        if self.lora.alpha is None:
            self.lora.alpha = 2.0 * self.lora.rank
        return self

    @model_validator(mode="after")
    def _trainer_accepts_it(self):
        """The trainer's own parsing, on the config the host will hand it: what passes here trains there."""
        try:
            parse_config(trainer_settings(self.model_dump()))
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self


def trainer_settings(spec: dict) -> dict:
    """The trainer config's part that comes from the spec (runner/host/launch.py adds the host's paths)."""
    return {"model": spec["model"], "dataset": spec["dataset"], "output_dir": "output", "format": spec["format"],
            "method": spec["method"], "lora": spec["lora"], "train": spec["train"],
            "trust_remote_code": spec["trust_remote_code"], **({"eval": spec["eval"]} if spec.get("eval") else {}),
            **({"samples": spec["samples"]} if spec.get("samples") else {})}


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read a job file, apply `--set key=value` overrides, and validate the result."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise UsageError(f"{path}: no such job file. Check the path, or start from examples/demo.yaml.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; give the job file inside it, e.g. {path}/job.yaml.") from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line} is not UTF-8 text (byte 0x{err.object[err.start]:02x}); "
                         "save the job file as UTF-8.") from None
    except DuplicateKey as err:
        raise UsageError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)}). "
                         "Fix the syntax.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a job file is a mapping with keys such as model, dataset, train. "
                         "See examples/demo.yaml.")
    for item in overrides:
        apply_override(data, item)
    return validate_spec(data, source=str(path))


class DuplicateKey(ValueError):
    """A key given twice in one mapping: YAML would keep the last silently."""


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (two train: sections, say)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(f"'{key}' appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                   "keep one, YAML would silently use the last.")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def apply_override(data: dict, item: str) -> None:
    """Set one dotted key from `key=value`; the value is parsed as YAML (numbers stay numbers)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=1e-4.")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {key}: '{part}' is not a section. Use a key such as train.max_steps.")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def validate_spec(data: dict, source: str = "job") -> JobSpec:
    """Validate a parsed job; the first problem becomes one UsageError line."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise UsageError(f"{source}: {describe_error(err.errors()[0])}") from None


def describe_error(error: dict[str, Any]) -> str:
    """Turn one pydantic error into 'key: problem. Fix.'"""
    loc = [str(p) for p in error["loc"] if not _is_union_branch(p)]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        hint = nearest_key(loc)
        fix = f"did you mean '{hint}'?" if hint else f"valid keys here: {', '.join(valid_keys(loc[:-1]))}."
        return f"unknown key '{key}'; {fix}"
    if error["type"] == "missing":
        return f"'{key}' is required. Add it to the job file."
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    msg = error["msg"].removeprefix("Value error, ")
    return f"{key + ': ' if key else ''}{msg}{shown}. Fix the value in the job file or the --set override."


def _is_union_branch(part) -> bool:
    # pydantic adds the branch type to the location of a union member ('int', 'literal[...]', 'dict[...]')
    return isinstance(part, str) and (part in {"int", "float", "bool", "str", "none"}
                                      or part.startswith(("literal[", "dict[", "list[", "constrained-")))


def valid_keys(loc: list[str]) -> list[str]:
    """The keys allowed at a dotted location of the spec."""
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        if not part.isdigit():  # an item of a list (dataset.1.weight): the list's model
            model = _model_in(getattr(model.model_fields.get(part), "annotation", None))
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: itself, or inside X | None, list[X] or Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, get_args(annotation)) if m is not None), None)


def nearest_key(loc: list[str]) -> str | None:
    """The closest valid dotted key to an unknown one, if any is close."""
    candidates = valid_keys(loc[:-1])
    match = difflib.get_close_matches(loc[-1], candidates, n=1, cutoff=0.6)
    return ".".join([*loc[:-1], match[0]]) if match else None
