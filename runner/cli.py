"""The `runner` command: wires typer commands, nothing else."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from runner.errors import EXIT_INTERRUPTED, RunnerError

# Plain click help: rich panels print a type for every option ("--dry-run <bool>", "--set <list[str]>")
app = typer.Typer(help="Turn a vLLM box into a safe fine-tuning machine and back, from your laptop.",
                  add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
err_console = Console(stderr=True)

Hosts = Annotated[str | None, typer.Option("--hosts", metavar="NAME,...",
                                            help="Comma-separated host names (default: all).")]
InventoryOpt = Annotated[str | None, typer.Option("-i", "--inventory", metavar="FILE",
                                                  help="Ansible inventory (default: localhost).")]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"runner (gpu-runner) {version('gpu-runner')}")
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _group(
    ctx: typer.Context,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    """Turn a vLLM box into a safe fine-tuning machine and back, from your laptop."""
    if ctx.invoked_subcommand is None:  # bare `runner`: the help, and success
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


@app.command()
def train(
    job: Annotated[str | None, typer.Argument(metavar="JOB.yaml", help="The job spec (YAML).")] = None,
    hosts: Hosts = None,
    inventory: InventoryOpt = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a key: train.learning_rate=1e-4.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and print the plan; change nothing.")] = False,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="ID", help="Continue session ID from its newest checkpoint.")]
    = None,
    multi_node: Annotated[bool, typer.Option(
        "--multi-node", help="One job across the hosts (the first hosts the rendezvous), not one per host.")] = False,
) -> None:
    """Run a training session on each host: cap power, stop inference, train, restore."""
    from runner.commands.train import train as run_train

    raise typer.Exit(run_train(job, hosts, inventory, set_ or [], dry_run, resume, multi_node))


SessionId = Annotated[str, typer.Argument(metavar="ID", help="A session id ('runner status' lists them).")]


@app.command()
def status(
    session: Annotated[str | None, typer.Argument(metavar="ID", help="One session (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sessions as JSON.")] = False,
) -> None:
    """List sessions from the local ledger, with live state from the hosts."""
    from runner.commands.session import status as show

    raise typer.Exit(show(session, as_json))


@app.command()
def logs(session: SessionId,
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until it ends.")] = False,
         ) -> None:
    """Print a session's training log from its hosts."""
    from runner.commands.session import logs as show

    raise typer.Exit(show(session, follow))


@app.command()
def stop(session: SessionId) -> None:
    """Stop a session gracefully: checkpoint, then restore power and inference."""
    from runner.commands.session import stop as request

    raise typer.Exit(request(session))


@app.command()
def attach(session: SessionId) -> None:
    """Follow a running session again (after the laptop was away) and fetch its results."""
    from runner.commands.session import attach as follow

    raise typer.Exit(follow(session))


@app.command()
def clean(
    session: Annotated[str | None, typer.Argument(metavar="ID", help="A finished session ('runner status').")] = None,
    older_than: Annotated[str | None, typer.Option(
        "--older-than", metavar="AGE", help="Every session that ended over AGE ago (7d, 12h, 30m).")] = None,
    hosts: Hosts = None,
    inventory: InventoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be freed; remove nothing.")] = False,
) -> None:
    """Free host space: staged inputs and checkpoints of finished sessions, unused shared models; results stay."""
    from runner.commands.clean import clean as run_clean

    raise typer.Exit(run_clean(session, older_than, hosts, inventory, dry_run))


@app.command()
def setup(
    hosts: Hosts = None,
    inventory: InventoryOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Show what would change; change nothing.")] = False,
    tags: Annotated[str | None, typer.Option("--tags", metavar="PARTS",
                                             help="Only these parts, comma-separated: power, venv, accelerate, "
                                                  "units, inference.")] = None,
) -> None:
    """Provision hosts: training venv, power limits and boot unit, accelerate config, session and vLLM units."""
    from runner.commands.setup import setup as run_setup

    raise typer.Exit(run_setup(inventory, hosts, check, tags))


@app.command(name="hosts")
def hosts_(hosts: Hosts = None, inventory: InventoryOpt = None) -> None:
    """One table per host: GPUs, power limits (now, standing, session), temperature, processes, vLLM, venv."""
    from runner.commands.hosts import show_hosts

    raise typer.Exit(show_hosts(inventory, hosts))


@app.command()
def serve(
    session: Annotated[str | None, typer.Argument(metavar="ID", help="The session whose fine-tune to serve.")] = None,
    adapter: Annotated[bool, typer.Option("--adapter", help="Serve the LoRA adapter on the base (default).")]
    = False,
    merge: Annotated[bool, typer.Option("--merge", help="Merge onto the unquantized base and serve that.")] = False,
    hosts: Hosts = None,
    inventory: InventoryOpt = None,
    name: Annotated[str | None, typer.Option(
        "--name", metavar="NAME", help="The model name clients use (ft-<session>).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="Show what each host serves now.")] = False,
    revert: Annotated[bool, typer.Option("--revert", help="Go back to the base configuration.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list: print JSON.")] = False,
    health_timeout: Annotated[int, typer.Option(
        "--health-timeout", metavar="SECONDS", help="Seconds vLLM may take to be healthy.")]
    = 600,
) -> None:
    """Serve a session's fine-tune with vLLM (health-gated, rolled back on failure); --list; --revert."""
    from runner.commands.serve import serve as run_serve

    raise typer.Exit(run_serve(session, adapter, merge, hosts, inventory, name, list_, revert, as_json,
                               health_timeout))


power_app = typer.Typer(help="GPU power limits and the PSU budget.", rich_markup_mode=None)
app.add_typer(power_app, name="power")


@power_app.callback(invoke_without_command=True)
def _power(ctx: typer.Context) -> None:
    """GPU power limits and the PSU budget."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


@power_app.command("plan")
def power_plan(hosts: Hosts = None, inventory: InventoryOpt = None) -> None:
    """The PSU arithmetic per host for the standing and session limits, and the highest safe limits."""
    from runner.commands.power import plan

    raise typer.Exit(plan(inventory, hosts))


def main() -> None:
    try:
        app(prog_name="runner")
    except RunnerError as err:
        err_console.print(f"Error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted.", style="red")
        sys.exit(EXIT_INTERRUPTED)
