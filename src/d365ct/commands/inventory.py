"""``d365ct sync inventory``, ``d365ct reconcile inventory`` and ``d365ct reconcile report``.

Exit codes: 0 done; 1 the run failed; 2 done, but some records failed (see the error queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from d365ct.config import Settings, load_settings
from d365ct.errors import D365ctError
from d365ct.store import make_engine, migrate

__all__ = ["EXIT_FAILED", "EXIT_RECORDS_FAILED", "register"]

EXIT_FAILED = 1
EXIT_RECORDS_FAILED = 2
DEFAULT_CONFIG = Path("d365ct.toml")
CONFIG_ENV = "D365CT_CONFIG"
SHOWN_LINES = 200  # report lines printed as a table; --csv or --json give them all

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="TOML configuration; default ./d365ct.toml when it exists.",
        show_default=False,
        dir_okay=False,
    ),
]
LegalEntityOption = Annotated[
    str | None,
    typer.Option(
        "--legal-entity",
        "-l",
        help="Only this D365 legal entity (dataAreaId); default: every configured one.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


# -- shared ------------------------------------------------------------------------------------


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=160)  # captured: do not squeeze to 80
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(command: str, message: str, code: int = EXIT_FAILED) -> NoReturn:
    _err().print(Text(f"d365ct {command}: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _settings(command: str, config: Path | None) -> Settings:
    if config is not None and not config.is_file():
        _fail(command, f"configuration file {config} not found")
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        return load_settings(path)
    except D365ctError as exc:
        _fail(command, str(exc))


@contextmanager
def _store(command: str, url: str) -> Iterator[sa.Engine]:
    try:
        migrate(url)  # a no-op on an up-to-date store
        engine = make_engine(url)
    except (ValueError, sa.exc.SQLAlchemyError) as exc:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        _fail(command, f"cannot open the store at {shown}: {exc}")
    try:
        yield engine
    finally:
        engine.dispose()


def _row(table: Table, *values: object) -> None:
    """Add a row of data: text as it is, never read as Rich markup ("[[warehouses]]", SKUs)."""
    table.add_row(
        *(v if isinstance(v, Text) else Text("" if v is None else str(v)) for v in values)
    )


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _failure_table(failures: list[Any], failed: int) -> Table:
    """Failures grouped by step and reason: unmapped warehouses read as one line each."""
    table = Table(title=f"{failed} failed records (d365ct errors list)", box=box.SIMPLE)
    table.add_column("records", justify="right")
    table.add_column("step")
    table.add_column("reason", overflow="fold")
    grouped = Counter((f.step, f.reason) for f in failures)
    for (step, reason), count in grouped.most_common():
        _row(table, count, step, reason)
    if failed > len(failures):
        table.caption = f"grouped from the first {len(failures)} failures"
    return table


# -- sync inventory ----------------------------------------------------------------------------


def sync_inventory_command(
    full: Annotated[
        bool,
        typer.Option("--full", help="Ignore what the last sync wrote; compare every entry."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the changes; write nothing anywhere.")
    ] = False,
    legal_entity: LegalEntityOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sync on-hand stock from D365 to commercetools inventory (changed quantities only).

    Reads WarehousesOnHandV2 page by page per legal entity, maps each warehouse to its supply
    channel ([[warehouses]]) and writes only quantities that changed since the last sync.
    Records that fail (unmapped warehouse, missing channel, rejected write) go to the error
    queue; the rest proceeds.
    """
    from d365ct.flows.inventory import sync_inventory

    command = "sync inventory"
    settings = _settings(command, config)
    with (
        _store(command, settings.store.url) as engine,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err(),
            transient=True,
        ) as progress,
    ):
        tasks: dict[str, TaskID] = {}

        def on_page(entity: str, read: int, total: int | None) -> None:
            if entity not in tasks:
                tasks[entity] = progress.add_task(f"{entity}: on-hand rows", total=total)
            progress.update(tasks[entity], completed=read, total=total)

        try:
            summary = asyncio.run(
                sync_inventory(
                    settings,
                    engine,
                    legal_entity=legal_entity,
                    full=full,
                    dry_run=dry_run,
                    progress=on_page,
                )
            )
        except D365ctError as exc:
            progress.stop()
            _fail(command, str(exc))
    if as_json:
        _print_json(summary.as_dict())
    else:
        out = _out()
        mode = ", ".join(m for m, on in (("full", full), ("dry run", dry_run)) if on)
        table = Table(
            title=f"Inventory sync: {', '.join(summary.legal_entities)}"
            + (f" ({mode})" if mode else ""),
            box=box.SIMPLE,
            show_header=False,
        )
        table.add_column("what")
        table.add_column("count", justify="right")
        verb = "to " if dry_run else ""
        for label, value in (
            ("on-hand rows read", summary.rows),
            ("entries (sku × channel)", summary.entries),
            (f"{verb}create", summary.created),
            (f"{verb}update", summary.updated),
            (f"{verb}zero (row gone in D365)", summary.zeroed),
            ("unchanged", summary.unchanged),
            ("failed", summary.failed),
            ("D365 calls", summary.d365_calls),
            ("commercetools calls", summary.ct_calls),
            ("seconds", f"{summary.seconds:.2f}"),
        ):
            _row(table, label, value)
        out.print(table)
        if dry_run and summary.planned:
            planned = Table(title="Planned changes (nothing was written)", box=box.SIMPLE)
            for column in ("legal entity", "sku", "channel", "warehouse", "action"):
                planned.add_column(column)
            planned.add_column("before", justify="right")
            planned.add_column("after", justify="right")
            for change in summary.planned[:SHOWN_LINES]:
                _row(
                    planned,
                    change.legal_entity,
                    change.sku,
                    change.supply_channel,
                    change.warehouse,
                    change.action,
                    "—" if change.before is None else str(change.before),
                    str(change.after),
                )
            if summary.written > SHOWN_LINES:
                planned.caption = f"first {SHOWN_LINES} of {summary.written}; --json lists more"
            out.print(planned)
        if summary.failures:
            out.print(_failure_table(summary.failures, summary.failed))
    if summary.failed:
        raise typer.Exit(EXIT_RECORDS_FAILED)


# -- reconcile inventory -----------------------------------------------------------------------


def reconcile_inventory_command(
    legal_entity: LegalEntityOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reconcile commercetools stock with a bulk DMF export of D365 on-hand, and report it.

    Corrects every difference (changeQuantity), creates missing entries, sets entries with no
    D365 row to 0, and stores a report per legal entity: d365ct reconcile report <id>.
    """
    from d365ct.engine import launch_engine, shutdown_engine
    from d365ct.flows.reconcile import package_jobs, reconcile_inventory, summary_counts

    command = "reconcile inventory"
    settings = _settings(command, config)
    with _store(command, settings.store.url) as engine:
        jobs = package_jobs(settings)  # before the launch, so DBOS can recover its workflows
        # DBOS narrates its start and stop at INFO; on a command line the progress says enough
        logging.getLogger("dbos").setLevel(logging.WARNING)
        try:
            launch_engine(settings.store.url, command=True)
        except Exception as exc:  # DBOS raises plain exceptions on a bad database
            _fail(command, f"cannot start the workflow engine: {exc}")
        try:
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=_err(),
                transient=True,
            ) as progress:
                task = progress.add_task("starting", total=None)

                def on_status(entity: str, message: str) -> None:
                    progress.update(task, description=f"{entity}: {message}")

                try:
                    results = asyncio.run(
                        reconcile_inventory(
                            settings, engine, jobs, legal_entity=legal_entity, status=on_status
                        )
                    )
                except D365ctError as exc:
                    progress.stop()
                    _fail(command, str(exc))
        finally:
            shutdown_engine()
            jobs._clients.clear()  # bound to the event loop asyncio.run closed
    if as_json:
        _print_json([result.as_dict() for result in results])
    else:
        out = _out()
        for result in results:
            if result.state == "failed":
                out.print(Text(f"{result.legal_entity}: failed — {result.error}", style="red"))
                continue
            out.print(_counts_table(result.report_id, result.counts))
            out.print(f"Lines: d365ct reconcile report {result.report_id} --csv")
    if any(result.state == "failed" for result in results):
        raise typer.Exit(EXIT_FAILED)
    if summary_counts(results).get("failed"):
        raise typer.Exit(EXIT_RECORDS_FAILED)


def _counts_table(report_id: str, counts: dict[str, Any]) -> Table:
    actions = counts.get("actions") or {}
    names = [name for name in actions if name]
    table = Table(title=f"Reconciliation {report_id}", box=box.SIMPLE)
    table.add_column("warehouse")
    for name in names:
        table.add_column(name, justify="right")
    for warehouse, by_action in (counts.get("warehouses") or {}).items():
        _row(table, warehouse, *(by_action.get(name, 0) for name in names))
    table.add_row(
        Text("total", style="bold"), *(Text(str(actions[n]), style="bold") for n in names)
    )
    extra = [f"{counts.get('rows', 0)} D365 rows, {counts.get('ct_entries', 0)} entries scanned"]
    for channel, problem in (counts.get("problems") or {}).items():
        extra.append(f"{channel}: {problem}")
    if counts.get("error"):
        extra.append(f"error: {counts['error']}")
    table.caption = Text("; ".join(extra))
    return table


# -- reconcile report --------------------------------------------------------------------------


def report_command(
    report_id: Annotated[
        str | None,
        typer.Argument(help="Report id (as printed by reconcile inventory); omit to list."),
    ] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="The report's lines as CSV.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The report (counts and lines) as JSON.")
    ] = False,
    legal_entity: LegalEntityOption = None,
    limit: Annotated[int, typer.Option(help="Reports to list.", min=1)] = 20,
    config: ConfigOption = None,
) -> None:
    """List reconciliation reports, or show one: counts per action and warehouse, and a line
    per discrepancy with the quantities before and after (CSV or JSON for spreadsheets)."""
    from d365ct.commands.jobs import store_url
    from d365ct.store.reports import ReportStore

    command = "reconcile report"
    if as_csv and as_json:
        _fail(command, "choose one of --csv and --json", 2)
    if config is not None and not config.is_file():
        _fail(command, f"configuration file {config} not found")
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        url = store_url(path)
    except D365ctError as exc:
        _fail(command, str(exc))
    with _store(command, url) as engine:
        reports = ReportStore(engine)
        if report_id is None:
            if as_csv:
                _fail(command, "--csv needs a report id", 2)
            listed = reports.list(flow="inventory", legal_entity=legal_entity, limit=limit)
            if as_json:
                _print_json([report.as_dict() for report in listed])
                return
            table = Table(title="Inventory reconciliation reports", box=box.SIMPLE)
            for column in ("id", "LE", "started", "finished", *_SHOWN_ACTIONS):
                table.add_column(column)
            for report in listed:
                actions = report.counts.get("actions") or {}
                _row(
                    table,
                    report.id,
                    report.legal_entity,
                    report.started_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                    "running"
                    if report.finished_at is None
                    else "error"
                    if report.counts.get("error")
                    else report.finished_at.strftime("%H:%M:%SZ"),
                    *(str(actions.get(name, "")) for name in _SHOWN_ACTIONS),
                )
            _out().print(table)
            return
        found = reports.get(report_id)
        if found is None:
            _fail(command, f"no report {report_id!r} (d365ct reconcile report lists them)")
        if as_csv:
            reports.write_csv(report_id, sys.stdout)
            return
        if as_json:
            reports.write_json(report_id, sys.stdout)
            return
        out = _out()
        out.print(_counts_table(found.id, found.counts))
        lines = Table(title="Discrepancies", box=box.SIMPLE)
        for column in ("sku", "warehouse", "channel", "D365", "before", "after", "action"):
            numeric = column in ("D365", "before", "after")
            lines.add_column(column, justify="right" if numeric else "left")
        lines.add_column("detail", overflow="fold")
        for shown, line in enumerate(reports.lines(report_id)):
            if shown == SHOWN_LINES:
                lines.caption = f"first {SHOWN_LINES} lines; --csv or --json give all"
                break
            values = line.as_dict()
            _row(
                lines,
                *(
                    "" if values[name] is None else str(values[name])
                    for name in (
                        "sku",
                        "warehouse",
                        "supply_channel",
                        "d365_quantity",
                        "ct_before",
                        "ct_after",
                        "action",
                        "detail",
                    )
                ),
            )
        out.print(lines)


_SHOWN_ACTIONS = ("corrected", "created", "zeroed", "failed", "unchanged")


# -- wiring ------------------------------------------------------------------------------------


def register(sync_app: typer.Typer, reconcile_app: typer.Typer) -> None:
    """Add `inventory` to `d365ct sync`, and `inventory` and `report` to `d365ct reconcile`."""
    sync_app.command("inventory")(sync_inventory_command)
    reconcile_app.command("inventory")(reconcile_inventory_command)
    reconcile_app.command("report")(report_command)
