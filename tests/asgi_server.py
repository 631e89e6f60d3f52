"""Serve an ASGI app on a free loopback port in a thread, for tests that need a real server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn


@contextmanager
def serve_in_thread(
    app: Any, *, what: str = "the server", lifespan: Literal["auto", "on", "off"] = "auto"
) -> Iterator[str]:
    """Yield the base URL while uvicorn serves `app`; stop it when the block ends."""
    # proto=IPPROTO_TCP, not socket.socket()'s 0: asyncio sets TCP_NODELAY only on sockets whose
    # proto says TCP (accepted ones inherit it); without it every response waits ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan=lifespan)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start within 30 s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
