"""`d365sim serve` as a user runs it: a subprocess that starts its own Azurite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx


def test_serve_starts_azurite_seeds_and_announces_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "d365sim.cli", "serve", "--port", "0", "--seed-products", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["ready"] is True and ready["url"].startswith("http://127.0.0.1:")
        token = httpx.post(
            ready["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "scope": f"{ready['url']}/.default",
            },
        ).json()["access_token"]
        count = httpx.get(
            f"{ready['url']}/data/ReleasedProductsV2/$count",
            params={"cross-company": "true"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert count.text == "40"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: stops the server and its Azurite
        process.wait(timeout=30)
    assert process.returncode in (0, 130)  # 130: exited on SIGINT, as shells expect
    leftovers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "Azurite outlived d365sim"


def test_serve_reports_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "d365sim.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in result.stderr
