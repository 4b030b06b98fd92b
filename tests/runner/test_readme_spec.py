"""The README's job spec is a job spec: it parses and validates as one, and it names every key there is."""

import re

import yaml
from helpers import REPO
from pydantic import BaseModel

from runner.spec import JobSpec, validate_spec


def readme_spec() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### The job spec"):]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        found.add(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found |= keys(field.annotation, f"{prefix}{name}.")
    return found


def flatten(data: dict, prefix: str = "") -> set[str]:
    found = set()
    for name, value in data.items():
        found.add(prefix + name)
        if isinstance(value, dict) and not name.endswith("limit_w"):
            found |= flatten(value, f"{prefix}{name}.")
    return found


def test_the_readme_job_spec_validates_and_lists_every_key():
    data = yaml.safe_load(readme_spec())
    validate_spec(data, "README.md")
    missing = sorted(keys(JobSpec) - flatten(data))
    assert not missing, f"README.md's job spec lacks {missing}"
