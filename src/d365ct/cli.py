"""Command line of d365ct."""

from __future__ import annotations

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
    customers: Annotated[
        int, typer.Option(min=0, help="Customers the storefront registers in commercetools.")
    ] = 6,
    orders: Annotated[
        int,
        typer.Option(
            min=0,
            help="Orders the storefront places; from 4 up, two are bad on purpose (an unknown "
            "SKU, an unmapped store) and must land in the error queue.",
        ),
    ] = 12,
    port: Annotated[int, typer.Option(help="Port of the D365 simulator; 0 picks one.")] = 0,
    service_port: Annotated[
        int, typer.Option(help="Port of the service (dashboard, API, intake); 0 picks one.")
    ] = 0,
    job_seconds: Annotated[float, typer.Option(help="Duration of each simulated DMF job.")] = 2.0,
    exit_when_settled: Annotated[
        bool,
        typer.Option(
            "--exit",
            help="Stop when all seeded work settled; print a summary per flow; exit 0 only if "
            "the outcome matches what was seeded.",
        ),
    ] = False,
) -> None:
    """Run the main job on a local sandbox: d365sim and the commercetools mock; setup, the
    catalog, price and inventory syncs and a reconciliation; then the service (d365ct run, on
    SQLite) with its dashboard, fed by a storefront's customers and orders over the webhook
    intake. Without --exit it serves until Ctrl-C."""
    from d365ct.demo import run_demo

    code = run_demo(
        products=products,
        customers=customers,
        orders=orders,
        d365_port=port,
        service_port=service_port,
        job_seconds=job_seconds,
        exit_when_settled=exit_when_settled,
        echo=typer.echo,
    )
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
