"""Run a throwaway Azurite blob service: the storage account behind d365sim's DMF SAS URLs.

Azurite comes from the project's Node peers (`make install`); it listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

# Azurite's well-known development account; every Azurite instance accepts it.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
BIN_ENV = "D365SIM_AZURITE_BIN"
HOST = "127.0.0.1"

_RELATIVE_BIN = Path("node_modules", ".bin", "azurite-blob")
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
# Azurite binds port 0 to a free port and reports the real one on stdout; reading it back avoids
# the race of probing for a free port and then handing it to another process.
_LISTENING = re.compile(r"listens on https?://[^\s/]+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite is missing, or did not start."""


def find_azurite_bin() -> Path:
    """Locate `azurite-blob`: `$D365SIM_AZURITE_BIN`, else node_modules above this file or CWD."""
    configured = os.environ.get(BIN_ENV)
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise AzuriteError(f"{BIN_ENV}={configured} is not a file")
        return path
    starts = (Path(__file__).resolve().parent, Path.cwd().resolve())
    for start in starts:
        for directory in (start, *start.parents):
            candidate = directory / _RELATIVE_BIN
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(start) for start in starts)
    raise AzuriteError(
        f"Azurite not found: no {_RELATIVE_BIN} above {searched}. "
        f"Run `make install` (it installs the Node peers), or set {BIN_ENV}."
    )


class Azurite:
    """An Azurite blob service on a free port with its data in a temporary directory.

    Use as a context manager, or call `start()` and `stop()`.
    """

    def __init__(self, *, startup_timeout: float = 60.0, binary: Path | None = None) -> None:
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise AzuriteError("Azurite is not running")
        return self._port

    @property
    def data_dir(self) -> Path:
        """Azurite's `--location`: blobs and its metadata database."""
        if self._workdir is None:
            raise AzuriteError("Azurite is not running")
        return self._workdir / "data"

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> Azurite:
        if self._process is not None:
            raise AzuriteError("Azurite is already running")
        binary = self._binary or find_azurite_bin()
        self._workdir = Path(tempfile.mkdtemp(prefix="d365sim-azurite-"))
        self.data_dir.mkdir()
        command = [
            str(binary),
            "--blobHost",
            HOST,
            "--blobPort",
            "0",
            "--location",
            str(self.data_dir),
            # The Python SDK signs with API versions newer than Azurite knows about.
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            # Telemetry would phone home from every test run (and stall without network).
            "--disableTelemetry",
        ]
        # Output goes to files, not pipes: nobody drains a pipe after startup, and a full pipe
        # would block Azurite.
        with (
            (self._workdir / "stdout.log").open("wb") as stdout,
            (self._workdir / "stderr.log").open("wb") as stderr,
        ):
            try:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=self._workdir,
                    # Its own process group, so stop() also reaches anything Node spawns.
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                self.stop()
                raise AzuriteError(f"cannot run {binary}: {error}") from error
        try:
            self._port = self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate Azurite (its process group) and delete its data; safe to call twice."""
        process, self._process, self._port = self._process, None, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_listening(self) -> int:
        assert self._process is not None and self._workdir is not None
        deadline = time.monotonic() + self.startup_timeout
        port: int | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise AzuriteError(
                    f"Azurite exited with code {self._process.returncode} during startup"
                    f"{self._output()}"
                )
            if port is None:
                match = _LISTENING.search(self._log("stdout.log"))
                port = int(match.group(1)) if match else None
            if port is not None:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                except OSError:
                    pass
                else:
                    return port
            time.sleep(0.05)
        raise AzuriteError(
            f"Azurite did not accept connections within {self.startup_timeout:g} s{self._output()}"
        )

    def _log(self, name: str) -> str:
        assert self._workdir is not None
        try:
            return (self._workdir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _output(self) -> str:
        parts = [
            f"\n--- Azurite {stream} ---\n{text.strip()}"
            for stream in ("stderr", "stdout")
            if (text := self._log(f"{stream}.log")).strip()
        ]
        return "".join(parts) or " (no output)"


def _die_with_parent() -> None:
    """Linux: have the kernel SIGTERM Azurite when its parent dies, even by SIGKILL.

    Without it a killed test run or simulator leaves storage servers running.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
