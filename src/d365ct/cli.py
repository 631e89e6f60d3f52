"""Command line of d365ct."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Annotated

import typer

from d365ct.commands import catalog as catalog_commands
from d365ct.commands import inventory as inventory_commands
from d365ct.commands.jobs import jobs_app

app = typer.Typer(
    help="d365ct — Dynamics 365 F&O ⇄ commercetools integration.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")

sync_app = typer.Typer(help="Sync D365 master data to commercetools.", no_args_is_help=True)
reconcile_app = typer.Typer(help="Compare and correct D365 against commercetools.")
catalog_commands.register(sync_app)
inventory_commands.register(sync_app, reconcile_app)
app.add_typer(sync_app, name="sync")
app.add_typer(reconcile_app, name="reconcile")
app.command("setup")(catalog_commands.setup_command)


@app.callback()
def _root() -> None:
    """d365ct — Dynamics 365 F&O ⇄ commercetools integration."""


@app.command()
def demo(
    products: Annotated[int, typer.Option(help="Released products to seed in D365.")] = 1000,
    port: Annotated[int, typer.Option(help="Port of the D365 simulator; 0 picks one.")] = 8081,
    job_seconds: Annotated[float, typer.Option(help="Duration of each simulated DMF job.")] = 5.0,
    exit_when_settled: Annotated[
        bool, typer.Option("--exit", help="Check the sandbox, print a summary and exit.")
    ] = False,
) -> None:
    """Run the local sandbox: a seeded D365 F&O simulator to explore."""
    from d365ct.demo import explore_text, running_simulator

    try:
        with running_simulator(products, port, job_seconds) as sandbox:
            if exit_when_settled:
                sandbox.token()
                counts = sandbox.counts()
                typer.echo(f"d365sim at {sandbox.url}: {sum(counts.values()):,} rows")
                for name, count in counts.items():
                    typer.echo(f"  {name:<28} {count:>10,}")
                return
            typer.echo(explore_text(sandbox))
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    except RuntimeError as exc:
        typer.echo(f"d365ct demo: {exc}", err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
