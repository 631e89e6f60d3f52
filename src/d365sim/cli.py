"""Command line of d365sim: `d365sim serve` runs the simulator until interrupted.

Without a blob connection string it starts Azurite from the project's Node peers itself.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from d365sim.config import Faults, SimConfig

app = typer.Typer(
    help="d365sim — a local Dynamics 365 F&O OData and DMF simulator.", no_args_is_help=True
)


@app.callback()
def _root() -> None:
    """d365sim — a local Dynamics 365 F&O OData and DMF simulator."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8081,
    base_url: Annotated[
        str | None, typer.Option(help="URL clients use (token audience, links).")
    ] = None,
    tenant: Annotated[str, typer.Option(help="Entra tenant id in the token URL.")] = "sandbox",
    client_id: Annotated[str, typer.Option(help="The registered client id.")] = "sandbox-client",
    client_secret: Annotated[
        str, typer.Option(help="The client's secret.", envvar="D365SIM_CLIENT_SECRET")
    ] = "sandbox-secret",
    seed_products: Annotated[int, typer.Option(help="Released products to seed.")] = 1000,
    seed_onhand_rows: Annotated[
        int | None, typer.Option(help="Exact number of on-hand rows to seed.")
    ] = None,
    default_company: Annotated[str, typer.Option(help="The user's default company.")] = "usmf",
    job_seconds: Annotated[float, typer.Option(help="Fixed duration of every DMF job.")] = 20.0,
    row_ms: Annotated[float, typer.Option(help="Added job duration per row, ms.")] = 2.0,
    batch_threads: Annotated[int, typer.Option(help="DMF jobs running at once.")] = 1,
    sas_seconds: Annotated[int, typer.Option(help="Validity of SAS URLs.")] = 1800,
    token_seconds: Annotated[int, typer.Option(help="Lifetime of access tokens.")] = 3599,
    page_size: Annotated[int, typer.Option(help="Server-driven OData page size.")] = 10_000,
    throttle_rps: Annotated[
        float, typer.Option(help="Answer 429 beyond this many requests/s (0 = off).")
    ] = 0.0,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered 5xx.")] = 0.0,
    timeout_rate: Annotated[float, typer.Option(help="Share of requests that hang.")] = 0.0,
    status_bad_requests: Annotated[
        int, typer.Option(help="Transient 400s on the first status polls of each job.")
    ] = 0,
    blob_connection_string: Annotated[
        str | None,
        typer.Option(help="Azure Storage connection string; omitted: start Azurite."),
    ] = None,
    projects_file: Annotated[
        Path | None, typer.Option(help="TOML file with more data projects.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the entity database here (default: temporary).")
    ] = None,
) -> None:
    """Serve the simulator; prints one JSON line with its base URL once ready."""
    from d365sim.app import Simulator
    from d365sim.azurite import Azurite

    # IPPROTO_TCP explicitly: asyncio only disables Nagle on accepted sockets of a TCP socket,
    # and without that every response waits out the client's delayed ACK (about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        typer.echo(f"d365sim: cannot bind {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(2) from exc
    bound_port = sock.getsockname()[1]
    config = SimConfig(
        tenant=tenant,
        client_id=client_id,
        client_secret=client_secret,
        base_url=base_url or f"http://{host}:{bound_port}",
        default_company=default_company.lower(),
        token_seconds=token_seconds,
        page_size=page_size,
        job_seconds=job_seconds,
        row_ms=row_ms,
        batch_threads=batch_threads,
        sas_seconds=sas_seconds,
        blob_connection_string=blob_connection_string,
        seed_products=seed_products,
        seed_onhand_rows=seed_onhand_rows,
        projects_file=projects_file,
        data_dir=data_dir,
        faults=Faults(
            throttle_rps=throttle_rps,
            error_rate=error_rate,
            timeout_rate=timeout_rate,
            status_bad_requests=status_bad_requests,
        ),
    )
    with contextlib.ExitStack() as stack:
        if not config.blob_connection_string:
            azurite = stack.enter_context(Azurite())
            config.blob_connection_string = azurite.connection_string
        simulator = Simulator(config)
        stack.callback(simulator.close)
        started = time.monotonic()
        counts = simulator.seed(seed_products, seed_onhand_rows)

        def announce() -> None:
            ready = {
                "ready": True,
                "url": config.resource,
                "tenant": config.tenant,
                "client_id": config.client_id,
                "token_url": f"{config.resource}/{config.tenant}/oauth2/v2.0/token",
                "seeded_rows": sum(counts.values()),
                "seed_seconds": round(time.monotonic() - started, 2),
            }
            print(json.dumps(ready), flush=True)

        application = simulator.app(on_ready=announce)

        # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit
        # lets this block unwind and stop Azurite instead of dying on the spot.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        server = uvicorn.Server(
            uvicorn.Config(application, log_level="warning", access_log=False, lifespan="on")
        )
        server.run(sockets=[sock])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
