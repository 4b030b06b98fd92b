"""The trainer's JSON config: dataclasses, loading, one-line errors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUTO = "auto"
FORMATS = ("auto", "chat", "instruction", "text")
METHODS = ("lora", "qlora")
# The one list of values: the job spec (runner/spec.py) imports these, so the laptop accepts what the trainer does
ATTENTIONS = ("auto", "varlen", "flash_attention_2", "flex_attention", "sdpa", "eager")
PADDING_FREE_ATTENTIONS = ("varlen", "flash_attention_2")  # these read packed rows only
MAX_SEED = 2**32 - 1  # numpy's seed range (accelerate seeds numpy too)


class ConfigError(ValueError):
    """The config cannot be used; the message is one line naming the key."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16  # higher fits better, costs memory
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainSettings:
    epochs: float = 1
    max_steps: int | None = None  # overrides epochs when set
    learning_rate: float = 2e-4
    batch_size: int | str = AUTO  # sequences of max_seq_len per micro-batch; auto sizes from free memory
    grad_accum: int = 1
    max_seq_len: int = 2048
    packing: bool | str = AUTO
    seed: int = 0
    save_steps: int = 50
    gradient_checkpointing: bool | str = AUTO  # auto: only when memory needs it
    liger: bool | str = AUTO
    compile: bool | str = AUTO
    attention: str = AUTO
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class DataSource:
    """One dataset of a mix: its records' share of the examples is weight / the sum of the weights."""

    path: str  # a .jsonl/.json file, a folder of them or a hub dataset id
    weight: float = 1
    format: str | None = None  # None: the job's format


@dataclass(frozen=True)
class EvalSettings:
    split: float | None = None  # records held out of the dataset: a fraction below 1, or a whole count
    dataset: str | None = None  # or a separate file
    every_steps: int | None = None  # None: only at the end
    patience: int | None = None  # evaluations without a lower loss before training stops early


@dataclass(frozen=True)
class SamplesSettings:
    count: int = 4  # prompts answered by the base model and the fine-tune at the end (samples.py); 0: off
    max_new_tokens: int = 128
    budget_s: float = 60  # inference stays down while they are generated: what is not done by then is left out


@dataclass(frozen=True)
class TrainConfig:
    model: str
    dataset: str | tuple[DataSource, ...]  # one source, or several mixed by weight
    output_dir: str
    # The model as the job named it (hub id, or the user's own path): the adapter's base; None: `model`
    base_model_name: str | None = None
    metrics_path: str | None = None
    stop_file: str | None = None
    format: str = AUTO
    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings | None = None  # None: no evaluation, training as before
    samples: SamplesSettings = field(default_factory=SamplesSettings)
    trust_remote_code: bool = False
    resume: bool = True
    # Seconds a collective may wait for a peer (multi-node: a lost host ends the job); None: torch's default
    collective_timeout_s: float | None = None


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a config file; unknown keys and bad values raise ConfigError."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a dict, with the same checks as load_config."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    top = _known(raw, TrainConfig, "")
    for key in ("model", "dataset", "output_dir"):
        if not top.get(key):
            raise ConfigError(f"config key '{key}' is required")
    lora = _known(top.pop("lora", None) or {}, LoraSettings, "lora.")
    if isinstance(lora.get("target_modules"), list):
        lora["target_modules"] = tuple(lora["target_modules"])
    train = _known(top.pop("train", None) or {}, TrainSettings, "train.")
    evaluation = top.pop("eval", None)
    if evaluation is not None:
        evaluation = EvalSettings(**_known(evaluation, EvalSettings, "eval."))
    top["dataset"] = _dataset(top["dataset"])
    samples = SamplesSettings(**_known(top.pop("samples", None) or {}, SamplesSettings, "samples."))
    cfg = TrainConfig(**top, lora=LoraSettings(**lora), train=TrainSettings(**train), eval=evaluation,
                      samples=samples)
    _validate(cfg)
    return cfg


def _dataset(raw: object) -> str | tuple[DataSource, ...]:
    """A path or id as given; a list becomes DataSources, each checked (dataset.N.key names the problem)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise ConfigError(f"dataset must be a path, a dataset id or a list of {{path, weight, format}}, not {raw!r}")
    found = []
    for index, item in enumerate(raw):
        source = DataSource(**{"path": None, **_known(item, DataSource, f"dataset.{index}.")})
        if not isinstance(source.path, str) or not source.path.strip():
            raise ConfigError(f"dataset.{index}.path must name a .jsonl/.json file, a folder of them or a dataset "
                              f"id, not {source.path!r}")
        _number(f"dataset.{index}.weight", source.weight, low=0)
        if source.format is not None:
            _one_of(f"dataset.{index}.format", source.format, FORMATS)
        if any(source.path == other.path for other in found):
            raise ConfigError(f"dataset.{index}.path {source.path} is named twice; give it once, with the sum of "
                              "the weights")
        found.append(source)
    return tuple(found)


def sources(cfg: TrainConfig) -> tuple[DataSource, ...]:
    """The job's datasets: one source of weight 1 in the job's format, or the mix as given."""
    return (DataSource(cfg.dataset),) if isinstance(cfg.dataset, str) else cfg.dataset


def _known(raw: dict[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    return dict(raw)


def _validate(cfg: TrainConfig) -> None:
    t = cfg.train
    _one_of("format", cfg.format, FORMATS)
    _one_of("method", cfg.method, METHODS)
    _one_of("train.attention", t.attention, ATTENTIONS)
    for key in ("packing", "gradient_checkpointing", "liger", "compile"):
        value = getattr(t, key)
        if value != AUTO and not isinstance(value, bool):
            raise ConfigError(f'train.{key} must be true, false or "auto", not {value!r}')
    if t.packing is False and t.attention in PADDING_FREE_ATTENTIONS:
        raise ConfigError(f"train.attention {t.attention} needs train.packing true (padding-free rows)")
    _positive_int("train.batch_size", t.batch_size, allow_auto=True)
    _positive_int("train.grad_accum", t.grad_accum)
    _positive_int("train.max_seq_len", t.max_seq_len)
    _positive_int("train.save_steps", t.save_steps)
    _positive_int("lora.rank", cfg.lora.rank)
    if t.max_steps is not None:
        _positive_int("train.max_steps", t.max_steps)
    if isinstance(t.seed, bool) or not isinstance(t.seed, int) or not 0 <= t.seed <= MAX_SEED:
        raise ConfigError(f"train.seed must be an integer from 0 to {MAX_SEED}, not {t.seed!r}")
    _number("train.epochs", t.epochs, low=0)
    _number("train.learning_rate", t.learning_rate, low=0)
    _number("train.warmup_ratio", t.warmup_ratio, low=0, high=1, low_inclusive=True)
    _number("train.weight_decay", t.weight_decay, low=0, low_inclusive=True)
    _number("train.max_grad_norm", t.max_grad_norm, low=0)
    _number("lora.alpha", cfg.lora.alpha, low=0)
    _number("lora.dropout", cfg.lora.dropout, low=0, high=1, low_inclusive=True)
    if cfg.collective_timeout_s is not None:
        _number("collective_timeout_s", cfg.collective_timeout_s, low=0)
    _target_modules(cfg.lora.target_modules)
    if cfg.eval is not None:
        _eval(cfg.eval)
    s = cfg.samples
    if isinstance(s.count, bool) or not isinstance(s.count, int) or s.count < 0:
        raise ConfigError(f"samples.count must be a whole number of prompts (0 turns samples off), not {s.count!r}")
    _positive_int("samples.max_new_tokens", s.max_new_tokens)
    _number("samples.budget_s", s.budget_s, low=0)


def _eval(ev: EvalSettings) -> None:
    if (ev.split is None) == (ev.dataset is None):
        raise ConfigError("eval needs one of split (records held out of the dataset, e.g. 0.1 or 50) or dataset "
                          "(a separate file)" + (", not both" if ev.split is not None else ""))
    if ev.split is not None:
        whole = isinstance(ev.split, int) and not isinstance(ev.split, bool) and ev.split >= 1
        fraction = isinstance(ev.split, float) and 0 < ev.split < 1
        if not whole and not fraction:
            raise ConfigError(f"eval.split must be a fraction below 1 (0.1 holds out 10 % of the records) or a "
                              f"whole count of records (50), not {ev.split!r}")
    if ev.dataset is not None and (not isinstance(ev.dataset, str) or not ev.dataset.strip()):
        raise ConfigError(f"eval.dataset must name a .jsonl/.json file, a folder of them or a dataset id, "
                          f"not {ev.dataset!r}")
    if ev.every_steps is not None:
        _positive_int("eval.every_steps", ev.every_steps)
    if ev.patience is not None:
        _positive_int("eval.patience", ev.patience)
        if ev.every_steps is None:
            raise ConfigError("eval.patience counts evaluations made every eval.every_steps steps; "
                              "set eval.every_steps too")


def _number(key: str, value: object, low: float, high: float = math.inf, low_inclusive: bool = False) -> None:
    """A finite number in (low, high) or [low, high)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
          and (value >= low if low_inclusive else value > low) and value < high)
    if not ok:
        bounds = f"{'[' if low_inclusive else '('}{low:g}, {high:g})" if high < math.inf else \
            f"{'>=' if low_inclusive else '>'} {low:g}"
        raise ConfigError(f"{key} must be a finite number {'in ' if high < math.inf else ''}{bounds}, not {value!r}")


def _target_modules(value: object) -> None:
    if value == "all-linear":
        return
    if not isinstance(value, tuple) or not value or not all(isinstance(m, str) and m.strip() for m in value):
        raise ConfigError(f'lora.target_modules must be "all-linear" or a non-empty list of module names '
                          f"such as [q_proj, v_proj], not {value!r}")


def _one_of(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")


def _positive_int(key: str, value: object, allow_auto: bool = False) -> None:
    if allow_auto and value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        also = ' or "auto"' if allow_auto else ""
        raise ConfigError(f"{key} must be a positive integer{also}, not {value!r}")
