"""Command line of d365sim: `d365sim serve` runs the simulator."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="d365sim — a local Dynamics 365 F&O OData and DMF simulator.", no_args_is_help=True
)


@app.callback()
def _root() -> None:
    """d365sim — a local Dynamics 365 F&O OData and DMF simulator."""


def main() -> None:
    app()
