"""``d365ct orders process``: drain the inbox once — customer sync (U4), then order posting (U3).

Exit codes: 0 all done or skipped; 1 the run failed; 2 some records went to the error queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Annotated, NoReturn

import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from d365ct.config import Settings, load_settings
from d365ct.errors import D365ctError
from d365ct.store import make_engine, migrate

__all__ = ["orders_app"]

EXIT_FAILED = 1
EXIT_RECORDS_FAILED = 2
DEFAULT_CONFIG = Path("d365ct.toml")
CONFIG_ENV = "D365CT_CONFIG"

orders_app = typer.Typer(
    help="Order posting (U3) and customer sync (U4) from the intake inbox.",
    no_args_is_help=True,
)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    Console(stderr=True, highlight=False, markup=False).print(
        Text(f"d365ct orders: {message}", style="red"), soft_wrap=True
    )
    raise typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    if config is not None and not config.is_file():
        _fail(f"configuration file {config} not found")
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        return load_settings(path)
    except D365ctError as exc:
        _fail(str(exc))


@orders_app.command("process")
def process(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_ENV,
            help="TOML configuration; default ./d365ct.toml when it exists.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Hold each micro-batch open for orders.max_wait_seconds to fill it "
            "(default: post what is there now).",
        ),
    ] = False,
    worker_id: Annotated[
        str | None,
        typer.Option("--worker-id", help="Who leases the messages; default host-pid."),
    ] = None,
    max_rounds: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many claim rounds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Drain the inbox once: claim customer and order messages, sync customers, post orders in
    one D365 package per legal entity and round, write the results back; exit when idle."""
    from d365ct.engine import launch_engine, shutdown_engine
    from d365ct.flows.orders import ProcessSummary, close_clients, commerce_flows, process_inbox
    from d365ct.intake import Inbox

    settings = _settings(config)
    settings.require_commercetools()
    url = settings.store.url
    try:
        migrate(url)
        engine = make_engine(url)
    except (ValueError, sa.exc.SQLAlchemyError) as exc:
        _fail(f"cannot open the store: {exc}")
    worker = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    flows = commerce_flows(settings, engine)  # before the launch, so DBOS can recover batches
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        launch_engine(
            url,
            command=True,
            import_concurrency=settings.d365.import_concurrency_per_legal_entity,
        )
    except Exception as exc:  # DBOS raises plain exceptions on a bad database
        _fail(f"cannot start the workflow engine: {exc}")
    inbox = Inbox(engine)

    async def run() -> ProcessSummary:
        try:
            return await process_inbox(
                flows, inbox, worker_id=worker, wait=wait, max_rounds=max_rounds
            )
        finally:
            await close_clients()

    try:
        with Console(stderr=True).status("processing the inbox"):
            summary = asyncio.run(run())
    except D365ctError as exc:
        _fail(str(exc))
    finally:
        inbox.close()
        shutdown_engine()
        engine.dispose()
    counts = summary.counts()
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
    else:
        table = Table(box=box.SIMPLE, title="Inbox processed", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("count", justify="right")
        for name, value in counts.items():
            shown = (
                ", ".join(f"{k} {v}" for k, v in value.items())
                if isinstance(value, dict)
                else value
            )
            table.add_row(name.replace("_", " "), str(shown or 0))
        Console(highlight=False).print(table)
    if counts["orders_failed"] or any(
        r.status == "failed" for r in (*summary.customers, *summary.orders)
    ):
        raise typer.Exit(EXIT_RECORDS_FAILED)
