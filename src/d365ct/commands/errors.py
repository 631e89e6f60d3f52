"""``d365ct errors``: the record-level error queue — list, show, replay through the flow, resolve.

Exit codes: 0 done; 1 no such entry, or the command failed; 2 some entries did not replay or close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import sqlalchemy as sa
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from d365ct.commands.jobs import store_url
from d365ct.config import Settings, load_settings
from d365ct.errors import D365ctError
from d365ct.store import make_engine, migrate
from d365ct.store.error_queue import EntryClosedError, ErrorEntry, ErrorQueue

__all__ = ["errors_app"]

EXIT_FAILED = 1
EXIT_NOT_FOUND = 1
EXIT_INCOMPLETE = 2
DEFAULT_CONFIG = Path("d365ct.toml")
CONFIG_ENV = "D365CT_CONFIG"
STATUSES = ("open", "replayed", "resolved", "all")
_STATUS_STYLE = {"open": "red", "replayed": "green", "resolved": "dim"}

errors_app = typer.Typer(
    help=(
        "The error queue: every record a flow could not complete, with its payload, step, "
        "error and correlation (message → workflow → D365 execution → commercetools).\n\n"
        "Exit codes: 0 done; 1 no such entry, or the command failed; 2 some entries did not "
        "replay or close."
    ),
    no_args_is_help=True,
)

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
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
FlowOption = Annotated[
    str | None,
    typer.Option("--flow", "-f", metavar="FLOW", help="Only entries of this flow (orders, …)."),
]


# -- plumbing ----------------------------------------------------------------------------------


def _out() -> Console:
    # markup off: D365's error texts hold brackets Rich would read as style tags
    console = Console(highlight=False, markup=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, markup=False, soft_wrap=True, width=200)
    return console


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    Console(stderr=True, highlight=False, markup=False).print(
        Text(f"d365ct errors: {message}", style="red"), soft_wrap=True
    )
    raise typer.Exit(code)


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        if not config.is_file():
            _fail(f"configuration file {config} not found")
        return config
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(_config_path(config))
    except D365ctError as exc:
        _fail(str(exc))


@contextlib.contextmanager
def _engine(url: str) -> Iterator[sa.Engine]:
    try:
        migrate(url)  # a no-op on an up-to-date store
        engine = make_engine(url)
    except (ValueError, sa.exc.SQLAlchemyError) as exc:
        shown = sa.make_url(url).render_as_string(hide_password=True)
        _fail(f"cannot open the store at {shown}: {exc}")
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def _queue(config: Path | None) -> Iterator[ErrorQueue]:
    """The error queue of the configured store; needs only [store] url."""
    try:
        url = store_url(_config_path(config))
    except D365ctError as exc:
        _fail(str(exc))
    with _engine(url) as engine:
        yield ErrorQueue(engine)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def entry_dict(entry: ErrorEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["created_at"] = _iso(entry.created_at)
    data["updated_at"] = _iso(entry.updated_at)
    return data


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _one_line(text: str | None, width: int) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _cell(value: object) -> Text:
    return value if isinstance(value, Text) else Text("" if value is None else str(value))


def _entries(queue: ErrorQueue, ids: list[int]) -> list[ErrorEntry]:
    found = []
    for entry_id in ids:
        entry = queue.get(entry_id)
        if entry is None:
            _fail(f"no error queue entry {entry_id}", EXIT_NOT_FOUND)
        found.append(entry)
    return found


# -- list / show -------------------------------------------------------------------------------


@errors_app.command("list")
def list_errors(
    flow: FlowOption = None,
    status: Annotated[
        str,
        typer.Option("--status", "-s", help=f"Entries in this status: {', '.join(STATUSES)}."),
    ] = "open",
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="At most this many.")] = 100,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List error queue entries, newest first (open ones by default)."""
    if status not in STATUSES:
        _fail(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    with _queue(config) as queue:
        entries = queue.list(status=None if status == "all" else status, flow=flow, limit=limit)
    if as_json:
        _print_json([entry_dict(e) for e in entries])
        return
    out = _out()
    if not entries:
        out.print(f"No {'' if status == 'all' else status + ' '}entries.")
        return
    table = Table(box=box.SIMPLE, title=f"Error queue ({status})")
    for column in ("id", "flow", "key", "step", "status", "tries", "updated", "error"):
        table.add_column(column, overflow="fold" if column == "error" else "ellipsis")
    for entry in entries:
        table.add_row(
            *map(
                _cell,
                (
                    entry.id,
                    entry.flow,
                    entry.business_key,
                    entry.step,
                    Text(entry.status, style=_STATUS_STYLE.get(entry.status, "")),
                    entry.attempts,
                    entry.updated_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                    _one_line(entry.error, 120),
                ),
            )
        )
    out.print(table)


@errors_app.command("show")
def show_error(
    entry_id: Annotated[int, typer.Argument(metavar="ID", help="The entry's id.")],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show one entry: the error, the correlation chain and the stored payload."""
    with _queue(config) as queue:
        (entry,) = _entries(queue, [entry_id])
    if as_json:
        _print_json(entry_dict(entry))
        return
    out = _out()
    table = Table(box=box.SIMPLE, show_header=False, title=f"Error queue entry {entry.id}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in (
        ("flow", entry.flow),
        ("business key", entry.business_key),
        ("step", entry.step),
        ("status", Text(entry.status, style=_STATUS_STYLE.get(entry.status, ""))),
        ("attempts", entry.attempts),
        ("created", _iso(entry.created_at)),
        ("updated", _iso(entry.updated_at)),
        ("note", entry.note),
        ("error", entry.error),
    ):
        table.add_row(_cell(name), _cell(value))
    for name, value in entry.correlation.items():
        if value is not None:
            table.add_row(_cell(f"→ {name}"), _cell(value))
    out.print(table)
    out.print(Text("payload", style="bold"))
    out.print(json.dumps(entry.payload, indent=2, ensure_ascii=False, default=str))


# -- replay / resolve --------------------------------------------------------------------------


@errors_app.command("replay")
def replay_errors(
    ids: Annotated[
        list[int] | None, typer.Argument(metavar="[ID]...", help="Entries to replay.")
    ] = None,
    all_open: Annotated[
        bool, typer.Option("--all-open", help="Replay every open entry (of --flow).")
    ] = False,
    flow: FlowOption = None,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="With --all-open: at most this many.")
    ] = 1000,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Re-drive entries through their flow's idempotent path; those that go through close as
    replayed, the others stay open with one more attempt and the new error."""
    from d365ct.engine import launch_engine, shutdown_engine
    from d365ct.flows.replay import durable_flows, prepare_durable

    if bool(ids) == all_open:
        _fail("name entry ids, or give --all-open (not both)")
    if ids and flow:
        _fail("--flow goes with --all-open")
    settings = _settings(config)
    with _engine(settings.store.url) as engine:
        queue = ErrorQueue(engine)
        entries = (
            queue.list(status="open", flow=flow, limit=limit)
            if all_open
            else _entries(queue, ids or [])
        )
        if not entries:
            _print_json([]) if as_json else _out().print("No open entries to replay.")
            return
        durable = durable_flows(e.flow for e in entries)
        launched = False
        if durable:
            prepare_durable(settings, durable)  # DBOS instances before the launch
            logging.getLogger("dbos").setLevel(logging.WARNING)
            try:
                launch_engine(
                    settings.store.url,
                    command=True,
                    import_concurrency=settings.d365.import_concurrency_per_legal_entity,
                )
                launched = True
            except Exception as exc:  # DBOS raises plain exceptions on a bad database
                _fail(f"cannot start the workflow engine: {exc}")
        try:
            outcomes = asyncio.run(_replay(settings, engine, entries))
        finally:
            if launched:
                shutdown_engine()
    if as_json:
        _print_json([o.as_dict() for o in outcomes])
    else:
        table = Table(box=box.SIMPLE, title="Replay")
        for column in ("id", "flow", "result", "detail"):
            table.add_column(column, overflow="fold")
        for o in outcomes:
            style = "green" if o.ok else "red"
            table.add_row(*map(_cell, (o.entry_id, o.flow, Text(o.status, style=style), o.detail)))
        _out().print(table)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(EXIT_INCOMPLETE)


async def _replay(settings: Settings, engine: sa.Engine, entries: list[ErrorEntry]) -> Any:
    from d365ct.flows.orders import close_clients
    from d365ct.flows.replay import replay_entries

    try:
        return await replay_entries(settings, engine, entries)
    finally:
        await close_clients()  # bound to this event loop, which asyncio.run is about to close


@errors_app.command("resolve")
def resolve_errors(
    ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Entries to close.")],
    note: Annotated[
        str, typer.Option("--note", "-n", help="Why it needs no replay (kept with the entry).")
    ],
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Close open entries by hand, with a note saying what was done instead."""
    if not note.strip():
        _fail("--note must say what was done")
    with _queue(config) as queue:
        entries = _entries(queue, ids)
        results: list[dict[str, Any]] = []
        for entry in entries:
            if entry.status != "open":
                results.append({"id": entry.id, "status": entry.status, "closed": False})
                continue
            try:
                closed = queue.close(entry.id, "resolved", note=note.strip())
            except EntryClosedError as exc:  # replayed or resolved meanwhile by someone else
                results.append({"id": entry.id, "status": exc.entry.status, "closed": False})
                continue
            results.append({"id": closed.id, "status": closed.status, "closed": True})
    if as_json:
        _print_json(results)
    else:
        out = _out()
        for result in results:
            if result["closed"]:
                out.print(Text(f"{result['id']}: resolved", style="green"))
            else:
                out.print(Text(f"{result['id']}: already {result['status']}", style="yellow"))
    if any(not r["closed"] for r in results):
        raise typer.Exit(EXIT_INCOMPLETE)
