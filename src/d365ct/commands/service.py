"""``d365ct run`` (the long-running service), ``d365ct config example`` (every settings key, with
its default and help) and ``d365ct check`` (configuration, connections, tokens and scopes).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from d365ct.config import Settings, load_settings
from d365ct.errors import D365ctError

__all__ = ["CONFIG_ENV", "check", "config_app", "config_example", "run"]

CONFIG_ENV = "D365CT_CONFIG"
DEFAULT_CONFIG = Path("d365ct.toml")
EXIT_FAILED = 1

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

_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def _err() -> Console:
    return Console(stderr=True, highlight=False, markup=False)


def _fail(command: str, message: str) -> NoReturn:
    _err().print(Text(f"d365ct {command}: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(EXIT_FAILED)


def _settings(command: str, config: Path | None) -> Settings:
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None and not config.is_file():
        _fail(command, f"configuration file {config} not found")
    try:
        return load_settings(config)
    except D365ctError as exc:
        _fail(command, str(exc))


def run(
    config: ConfigOption = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve the dashboard and API without a token. Local demos only: refused "
            "unless [service] bind is a loopback address.",
        ),
    ] = False,
    shutdown_timeout: Annotated[
        int,
        typer.Option(min=0, help="Seconds to let running workflow steps finish on SIGTERM/SIGINT."),
    ] = 30,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error (JSON lines on stderr).")
    ] = "info",
) -> None:
    """Run the service until SIGTERM/SIGINT: HTTP server, workflow engine, intake, scheduler.

    Serves the dashboard, the JSON API (/api), the webhook intake (/intake/commercetools),
    /healthz, /readyz and /metrics on [service] bind. The dashboard, API and /metrics need
    [service] token (a secret reference); without one the service refuses to start. Exit code
    0 after a graceful stop, 1 on a configuration error.
    """
    from d365ct.service.runner import run_service

    settings = _settings("run", config)
    try:
        run_service(
            settings,
            insecure_no_auth=insecure_no_auth,
            shutdown_timeout=shutdown_timeout,
            log_level=log_level.lower(),
        )
    except D365ctError as exc:
        _fail("run", str(exc))


config_app = typer.Typer(
    help="The configuration file: an example of every key.", no_args_is_help=True
)


@config_app.command("example")
def config_example(
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Print the reference (docs/configuration.md) instead."),
    ] = False,
) -> None:
    """Print a commented d365ct.toml with every settings key, its default and its help."""
    from d365ct.service.configdoc import example_toml
    from d365ct.service.configdoc import markdown as reference

    typer.echo(reference() if markdown else example_toml(), nl=False)


def check(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Validate the configuration and try every connection, token and scope.

    Exit code 1 when any check fails (warnings do not fail).
    """
    from d365ct.check import run_checks

    settings = _settings("check", config)
    try:
        results = asyncio.run(run_checks(settings))
    except D365ctError as exc:
        _fail("check", str(exc))
    failed = any(r.status == "fail" for r in results)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": not failed,
                    "results": [
                        {"name": r.name, "status": r.status, "detail": r.detail} for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        console = Console(highlight=False, markup=False, soft_wrap=True)
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(highlight=False, markup=False, soft_wrap=True, width=160)
        table = Table(box=box.SIMPLE_HEAVY, show_edge=False)
        table.add_column("check", overflow="fold")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for r in results:
            table.add_row(r.name, Text(r.status, style=_STATUS_STYLE[r.status]), r.detail)
        console.print(table)
        counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail")}
        console.print(
            Text(
                f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed",
                style="red" if failed else "green",
            )
        )
    if failed:
        raise typer.Exit(EXIT_FAILED)
