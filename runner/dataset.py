"""The job's local dataset, checked on the controller before anything is staged.

The same record checks the host's preflight runs (runner/train/probe.py), without the model's tokenizer: a
record the trainer cannot use is refused here, one line naming file:line, before any host is touched. The
host checks again with the tokenizer (chat template, tokens within max_seq_len).
"""

from __future__ import annotations

from runner.errors import Refused
from runner.spec import JobSpec, trainer_settings
from runner.train.config import ConfigError, parse_config
from runner.train.probe import check_data


def check_uploaded_dataset(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | None:
    """What the local dataset holds (formats, records checked); None when the dataset is not uploaded."""
    local = next((u["src"].rstrip("/") for u in uploads if u["dest"] == paths["dataset"]), None)
    if local is None:
        return None
    try:
        return check_data(parse_config({**trainer_settings(spec.model_dump()), "dataset": local}), tokenizer=None)
    except ConfigError as err:
        raise Refused(f"{err}. Fix the dataset; nothing was staged.") from None
