"""``d365ct sync catalog|prices`` and ``d365ct setup``: flow U1 and its commercetools setup.

Exit codes: 0 done; 1 the command failed (configuration, connection); 2 some records failed.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from d365ct.config import Settings, load_settings
from d365ct.errors import D365ctError
from d365ct.flows.catalog import NullProgress, SyncSummary, sync_catalog
from d365ct.flows.prices import sync_prices
from d365ct.flows.setup import SetupReport, run_setup
from d365ct.store import make_engine, migrate

__all__ = ["EXIT_FAILED", "EXIT_RECORDS_FAILED", "register", "setup_command"]

DEFAULT_CONFIG = Path("d365ct.toml")
CONFIG_ENV = "D365CT_CONFIG"
EXIT_FAILED = 1
EXIT_RECORDS_FAILED = 2

T = TypeVar("T")

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
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
FullOption = Annotated[
    bool,
    typer.Option("--full", help="Ignore stored hashes: diff everything against commercetools."),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be written; write nothing.")
]


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    Console(stderr=True, highlight=False).print(
        Text(f"d365ct: {message}", style="red"), soft_wrap=True
    )
    raise typer.Exit(code)


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # piped or captured: no terminal to fit, so do not fold lines at 80 columns
        console = Console(highlight=False, width=200)
    return console


def _settings(config: Path | None) -> Settings:
    if config is not None and not config.is_file():
        _fail(f"configuration file {config} not found")
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        return load_settings(path)
    except D365ctError as exc:
        _fail(str(exc))


@contextmanager
def _store(settings: Settings) -> Iterator[sa.Engine]:
    try:
        migrate(settings.store.url)  # a no-op on an up-to-date store
        engine = make_engine(settings.store.url)
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        _fail(f"cannot open the store ([store] url): {exc.__class__.__name__}: {exc}")
    try:
        yield engine
    finally:
        engine.dispose()


class _Bar:
    """Progress of a flow on a rich bar (stderr), its total growing as D365 is read."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._task = progress.add_task(label, total=0)
        self._total = 0

    def add_total(self, count: int) -> None:
        self._total += count
        self._progress.update(self._task, total=self._total)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)


def _run(coroutine: Callable[[Any], Coroutine[Any, Any, T]], label: str, quiet: bool) -> T:
    """Run a flow with a progress bar (none with --json); its errors become exit code 1."""
    try:
        if quiet:
            return asyncio.run(coroutine(NullProgress()))
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            return asyncio.run(coroutine(_Bar(progress, label)))
    except D365ctError as exc:
        _fail(str(exc))


def _print_summary(summary: SyncSummary, as_json: bool) -> None:
    if as_json:
        typer.echo(jsonlib.dumps(summary.as_dict(), indent=2, ensure_ascii=False))
    else:
        console = _out()
        mode = " (dry run: nothing written)" if summary.dry_run else ""
        mode += " (full)" if summary.full else ""
        table = Table(title=f"sync {summary.flow} {', '.join(summary.legal_entities)}{mode}")
        for name in ("created", "updated", "unchanged", "deleted", "skipped", "failed"):
            table.add_column(name, justify="right")
        table.add_row(
            *(
                str(getattr(summary, n))
                for n in ("created", "updated", "unchanged", "deleted", "skipped", "failed")
            )
        )
        console.print(table)
        calls = ", ".join(f"{m} {n}" for m, n in sorted(summary.ct_calls.items())) or "none"
        console.print(
            f"calls: D365 {summary.d365_calls}; commercetools {calls}; {summary.seconds:.1f} s"
        )
        for reason, count in sorted(summary.skipped_reasons.items()):
            console.print(f"skipped {count}: {reason}")
        for entry in summary.plan[:50]:
            detail = ", ".join(entry.get("actions", ())) or ""
            console.print(f"  would {entry['action']} {entry['key']} {detail}".rstrip())
        if len(summary.plan) > 50:
            console.print(f"  … and {len(summary.plan) - 50} more (see --json)")
        if summary.failed:
            console.print(
                Text(
                    f"{summary.failed} record(s) failed: see `d365ct errors list --flow "
                    f"{summary.flow}`",
                    style="red",
                )
            )
    if summary.failed:
        raise typer.Exit(EXIT_RECORDS_FAILED)


def register(sync_app: typer.Typer) -> None:
    """Add `catalog` and `prices` to the `sync` command group."""

    @sync_app.command("catalog")
    def sync_catalog_command(
        full: FullOption = False,
        dry_run: DryRunOption = False,
        legal_entity: Annotated[
            str | None,
            typer.Option(
                "--legal-entity",
                metavar="ID",
                help="Company whose released products form the catalog "
                "(default: catalog.source_legal_entity).",
            ),
        ] = None,
        config: ConfigOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Sync released products to commercetools products; only changed ones are written."""
        settings = _settings(config)
        with _store(settings) as engine:
            summary = _run(
                lambda progress: sync_catalog(
                    settings,
                    engine,
                    full=full,
                    dry_run=dry_run,
                    legal_entity=legal_entity,
                    progress=progress,
                ),
                "products",
                as_json,
            )
        _print_summary(summary, as_json)

    @sync_app.command("prices")
    def sync_prices_command(
        full: FullOption = False,
        dry_run: DryRunOption = False,
        legal_entity: Annotated[
            str | None,
            typer.Option(
                "--legal-entity",
                metavar="ID",
                help="Only this company's price agreements (default: every [[legal_entities]]).",
            ),
        ] = None,
        config: ConfigOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Sync sales price agreements to commercetools standalone prices, per legal entity."""
        settings = _settings(config)
        if legal_entity is not None:
            try:
                settings.legal_entity(legal_entity)
            except D365ctError as exc:
                _fail(str(exc))
        with _store(settings) as engine:
            summary = _run(
                lambda progress: sync_prices(
                    settings,
                    engine,
                    legal_entity=legal_entity,
                    full=full,
                    dry_run=dry_run,
                    progress=progress,
                ),
                "prices",
                as_json,
            )
        _print_summary(summary, as_json)


def setup_command(
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create what d365ct needs in commercetools (product type, supply channels, customer groups).

    Idempotent: a second run creates nothing. D365 data projects cannot be checked (no list API).
    """
    settings = _settings(config)
    report: SetupReport = _run(lambda _: run_setup(settings), "setup", True)
    if json:
        typer.echo(jsonlib.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        console = _out()
        table = Table(title="d365ct setup")
        for name in ("kind", "key", "outcome", "detail"):
            table.add_column(name, overflow="fold")
        styles = {"created": "green", "updated": "yellow", "failed": "red", "skipped": "dim"}
        for item in report.items:
            outcome = Text(item.outcome, style=styles.get(item.outcome, ""))
            table.add_row(item.kind, item.key, outcome, item.detail)
        console.print(table)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
