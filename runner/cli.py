"""The `runner` command: wires typer commands, nothing else."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from runner.errors import EXIT_INTERRUPTED, RunnerError

app = typer.Typer(help="Turn a vLLM box into a safe fine-tuning machine and back, from your laptop.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
err_console = Console(stderr=True)

Hosts = Annotated[str | None, typer.Option("--hosts", help="Comma-separated host names (default: all).")]
InventoryOpt = Annotated[str | None, typer.Option("-i", "--inventory",
                                                  help="Ansible inventory (default: localhost).")]


@app.callback()
def _group() -> None:
    """Turn a vLLM box into a safe fine-tuning machine and back, from your laptop."""


@app.command()
def train(
    job: Annotated[str, typer.Argument(help="The job spec (YAML).")],
    hosts: Hosts = None,
    inventory: InventoryOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: train.learning_rate=1e-4.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; change nothing.")] = False,
) -> None:
    """Run a training session on each host: cap power, stop inference, train, restore."""
    from runner.commands.train import train as run_train

    raise typer.Exit(run_train(job, hosts, inventory, set_ or [], dry_run))


def main() -> None:
    try:
        app()
    except RunnerError as err:
        err_console.print(f"Error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted.", style="red")
        sys.exit(EXIT_INTERRUPTED)
