"""Command line of d365ct."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="d365ct — Dynamics 365 F&O ⇄ commercetools integration.", no_args_is_help=True
)


@app.callback()
def _root() -> None:
    """d365ct — Dynamics 365 F&O ⇄ commercetools integration."""


def main() -> None:
    app()
