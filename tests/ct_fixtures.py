"""The commercetools mock (@labdigital/commercetools-mock) served over HTTP, once per session.

Each test gets its own project key on it: the mock keeps projects apart, so tests never meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from d365ct.commercetools import ClientCredentialsTokens, CommercetoolsClient

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "ct-mock-server.mjs"
PACKAGE = ROOT / "node_modules" / "@labdigital" / "commercetools-mock"
STARTUP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


@dataclass
class CtMockServer:
    """A running mock: API and auth share one base URL."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path


@dataclass
class CtMock:
    """One fresh project on the shared mock, and a way to build clients for it."""

    url: str
    project_key: str
    responses: list[httpx.Response] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return self.url

    @property
    def auth_url(self) -> str:
        return self.url

    def http(self, *, record: bool = True) -> httpx.AsyncClient:
        """An AsyncClient whose responses (token ones included) land in `self.responses`."""

        async def keep(response: httpx.Response) -> None:
            self.responses.append(response)

        hooks = {"response": [keep]} if record else {}
        return httpx.AsyncClient(timeout=30, event_hooks=hooks)

    def api_responses(self, method: str | None = None) -> list[httpx.Response]:
        """Recorded responses of the project API (not the token endpoint), optionally by method."""
        prefix = f"/{self.project_key}/"
        return [
            r
            for r in self.responses
            if r.request.url.path.startswith(prefix)
            and (method is None or r.request.method == method)
        ]

    def tokens(
        self, http: httpx.AsyncClient, client_id: str = "catalog", scopes: tuple[str, ...] = ()
    ) -> ClientCredentialsTokens:
        return ClientCredentialsTokens(
            http,
            auth_url=self.auth_url,
            client_id=client_id,
            client_secret=f"{client_id}-secret",
            scopes=scopes or (f"manage_products:{self.project_key}",),
            scope_in_query=True,  # the mock reads scope from the query string only
        )

    def client(
        self, http: httpx.AsyncClient, client_id: str = "catalog", **options: object
    ) -> CommercetoolsClient:
        options.setdefault("sort_honoured", False)  # the mock ignores sort on query endpoints
        return CommercetoolsClient(
            http,
            self.api_url,
            self.project_key,
            self.tokens(http, client_id),
            **options,  # type: ignore[arg-type]
        )


def _die_with_parent() -> None:
    """Linux: the kernel stops the mock when the test process dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start() -> CtMockServer:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the commercetools mock needs it (Node >= 20)")
    if not PACKAGE.is_dir():
        pytest.fail(f"{PACKAGE} is missing: run make install (it installs the Node peers)")
    workdir = Path(tempfile.mkdtemp(prefix="d365ct-ct-mock-"))
    # Output goes to files, not pipes: nobody drains a pipe after startup.
    with (workdir / "stdout.log").open("wb") as out, (workdir / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [node, str(SCRIPT), "--port", "0", "--auth"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        line = (workdir / "stdout.log").read_text(errors="replace").strip().splitlines()
        if line:
            with contextlib.suppress(ValueError):
                ready = json.loads(line[0])
                if ready.get("ready"):
                    return CtMockServer(str(ready["url"]), process, workdir)
        time.sleep(0.05)
    output = (workdir / "stderr.log").read_text(errors="replace")
    _stop(CtMockServer("", process, workdir))
    pytest.fail(f"the commercetools mock did not start within {STARTUP_SECONDS:g} s: {output}")


def _stop(server: CtMockServer) -> None:
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def ct_mock_server() -> Iterator[CtMockServer]:
    """The commercetools mock on a free local port, for the whole session."""
    server = _start()
    yield server
    _stop(server)


@pytest.fixture
def ct_mock(ct_mock_server: CtMockServer) -> CtMock:
    """A new, empty project on the shared mock (a unique project key per test)."""
    return CtMock(ct_mock_server.url, f"test-{uuid.uuid4().hex[:12]}")
