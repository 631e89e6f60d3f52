"""Command line of d365ct."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Annotated

import typer

from d365ct.commands import catalog as catalog_commands
from d365ct.commands import inventory as inventory_commands
from d365ct.commands.errors import errors_app
from d365ct.commands.jobs import jobs_app
from d365ct.commands.orders import orders_app
from d365ct.commands.service import check, config_app, run

app = typer.Typer(
    help="d365ct — Dynamics 365 F&O ⇄ commercetools integration.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(errors_app, name="errors")
app.add_typer(orders_app, name="orders")
app.add_typer(config_app, name="config")
app.command("run")(run)
app.command("check")(check)

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
    products: Annotated[int, typer.Option(help="Released products to seed in D365.")] = 200,
    port: Annotated[int, typer.Option(help="Port of the D365 simulator; 0 picks one.")] = 0,
    job_seconds: Annotated[float, typer.Option(help="Duration of each simulated DMF job.")] = 2.0,
    exit_when_settled: Annotated[
        bool, typer.Option("--exit", help="Stop when the seeded work settled; print a summary.")
    ] = False,
) -> None:
    """Run the main job on a local sandbox: d365sim and the commercetools mock, then setup and
    the catalog, price and inventory syncs and a reconciliation."""
    import asyncio
    import json

    from d365ct.demo import expected_outcome, run_flows, running_peers

    def show(result: object) -> None:
        name = getattr(result, "name", "")
        summary = getattr(result, "summary", {})
        keys = ("created", "updated", "unchanged", "failed", "zeroed", "deleted")
        figures = ", ".join(f"{k} {summary[k]}" for k in keys if summary.get(k))
        if "reports" in summary:
            figures = "; ".join(
                f"{r['legal_entity']}: {r['state']} {r.get('counts', {}).get('actions', '')}"
                for r in summary["reports"]
            )
        typer.echo(f"  {name:<22} {getattr(result, 'seconds', 0):>7.1f} s  {figures}")

    return_code: list[int] = []
    try:
        with running_peers(products, job_seconds, port) as sandbox:
            typer.echo(f"D365 F&O simulator   {sandbox.d365_url} ({sandbox.seeded_rows:,} rows)")
            typer.echo(f"commercetools mock   {sandbox.ct_url}/d365ct-demo")
            results = asyncio.run(run_flows(sandbox.settings(), show))
            problems = expected_outcome(results)
            if exit_when_settled:
                summary = {r.name: {"seconds": r.seconds, **r.summary} for r in results}
                (sandbox.workdir / "summary.json").write_text(json.dumps(summary, default=str))
                for problem in problems:
                    typer.echo(f"unexpected: {problem}", err=True)
                typer.echo("demo: " + ("settled as seeded" if not problems else "FAILED"))
                code = 1 if problems else 0
                return_code.append(code)
                return
            typer.echo("Explore: the peers stay up until Ctrl-C.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
    except RuntimeError as exc:  # a peer that did not start
        typer.echo(f"d365ct demo: {exc}", err=True)
        raise typer.Exit(1) from exc
    if return_code and return_code[0]:
        raise typer.Exit(return_code[0])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
