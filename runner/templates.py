"""Render the shared Jinja templates (templates/) from Python, as the roles render them."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from runner.paths import REPO_ROOT

TEMPLATES = REPO_ROOT / "templates"


def render(relative: str, **variables) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.globals["ansible_managed"] = "Managed by gpu-runner; local changes are overwritten."
    return env.get_template(relative).render(**variables)


def accelerate_config(gpus: list[dict], strategy: str = "ddp", port: int = 29500, **multi_node) -> dict:
    """The accelerate config a host with these GPUs gets, parsed. Multi-node: machines, machine_rank,
    main_address, processes_per_machine (the template's accelerate_config_* inputs)."""
    extra = {f"accelerate_config_{key}": value for key, value in multi_node.items()}
    text = render("accelerate/default_config.yaml.j2", accelerate_config_gpus=gpus,
                  accelerate_config_strategy=strategy, accelerate_config_port=port, **extra)
    return yaml.safe_load(text)


def template_path(relative: str) -> Path:
    return TEMPLATES / relative
