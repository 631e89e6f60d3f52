"""Shared helpers of the benchmarks: scale, the JSON result line, peak-RSS sampling, d365sim.

Each benchmark starts the real simulator (`d365sim serve`) as a child process and talks HTTP.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import psutil

if TYPE_CHECKING:
    from d365ct.config import D365Settings
    from d365ct.d365.http import D365Http

MB = 1024 * 1024
DMF_ACTIONS = "/data/DataManagementDefinitionGroups/Microsoft.Dynamics.DataEntities."
# Final states of DMFExecutionSummaryStatus; anything else means the job is still going.
DMF_FINAL = {"Succeeded", "PartiallySucceeded", "Failed", "Canceled", "Unknown"}


# ---------------------------------------------------------------------------------------------
# Scale and the result line


def bench_scale(environ: Mapping[str, str] = os.environ) -> float:
    """BENCH_SCALE as a positive float (1 when unset or empty)."""
    text = environ.get("BENCH_SCALE", "").strip() or "1"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"BENCH_SCALE must be a number, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"BENCH_SCALE must be positive, not {text!r}")
    return value


def scaled(full: int, scale: float, minimum: int = 1) -> int:
    """A size at full scale shrunk (or grown) by `scale`, never below `minimum`."""
    return max(minimum, round(full * scale))


def result_line(
    bench: str,
    *,
    ours: Mapping[str, Any],
    naive: Mapping[str, Any],
    ratio: float,
    goal: str,
    met: bool,
    scale: float,
) -> dict[str, Any]:
    """The result dict in the field order SPEC §8 shows."""
    return {
        "bench": bench,
        "ours": dict(ours),
        "naive": dict(naive),
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "scale": scale,
    }


def print_line(result: Mapping[str, Any]) -> None:
    """Print one result as a single JSON line on stdout (progress goes to stderr)."""
    print(json.dumps(result, separators=(", ", ": ")), flush=True)


def progress(message: str) -> None:
    """A progress note on stderr, so stdout holds nothing but result lines."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def per_second(count: float, seconds: float) -> float:
    # A phase too fast to time would otherwise divide by zero; report it as one clock tick.
    return round(count / max(seconds, 1e-6), 1)


def mb(size_bytes: float) -> float:
    # Two decimals: at BENCH_SCALE=0.01 a package is a fraction of a megabyte.
    return round(size_bytes / MB, 2)


# ---------------------------------------------------------------------------------------------
# Memory


def hwm_mb(pid: int) -> float | None:
    """The kernel's peak-RSS mark (VmHWM) of a live process, or None where /proc lacks it."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return mb(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def self_peak_mb() -> float:
    """This process's peak RSS as the OS counts it (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return mb(peak if sys.platform == "darwin" else peak * 1024)


class RssSampler:
    """Samples one process's RSS every `interval` seconds in a thread: peak overall and per phase.

    Sampling can miss a spike shorter than the interval; `peak_mb()` also takes the kernel's
    own high-water mark where the platform has one.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self._process = psutil.Process(pid)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._phase = "start"
        self._peaks: dict[str, int] = {}
        self._peak = 0
        self._last = 0
        self.samples = 0

    def start(self) -> Self:
        self._sample()
        self._thread = threading.Thread(target=self._run, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def phase(self, name: str) -> None:
        """Attribute the samples from now on to phase `name` (its peak starts afresh)."""
        self._sample()  # closes the previous phase with an up-to-date figure
        with self._lock:
            self._phase = name
            self._peaks[name] = self._last

    def phase_peak_mb(self, name: str) -> float:
        with self._lock:
            return mb(self._peaks.get(name, 0))

    def current_mb(self) -> float:
        self._sample()
        with self._lock:
            return mb(self._last)

    def peak_mb(self) -> float:
        """The sampled peak, raised to the kernel's high-water mark when that is readable."""
        self._sample()
        with self._lock:
            sampled = mb(self._peak)
        return max(sampled, hwm_mb(self.pid) or 0.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._sample():
                return

    def _sample(self) -> bool:
        try:
            rss = int(self._process.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        with self._lock:
            self.samples += 1
            self._last = rss
            self._peak = max(self._peak, rss)
            self._peaks[self._phase] = max(self._peaks.get(self._phase, 0), rss)
        return True


@dataclass
class BlockMeasure:
    """What `measure_block` found: wall time and this process's RSS before and at its peak."""

    seconds: float = 0.0
    baseline_mb: float = 0.0
    peak_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return round(max(0.0, self.peak_mb - self.baseline_mb), 2)


@contextlib.contextmanager
def measure_block(interval: float = 0.05) -> Iterator[BlockMeasure]:
    """Time a code block and sample this process's RSS while it runs."""
    found = BlockMeasure()
    with RssSampler(os.getpid(), interval) as sampler:
        found.baseline_mb = sampler.current_mb()
        sampler.phase("block")
        started = time.perf_counter()
        try:
            yield found
        finally:
            found.seconds = round(time.perf_counter() - started, 3)
            sampler.current_mb()
            # ru_maxrss is exact but covers the whole process life; the phase sample does not.
            found.peak_mb = max(sampler.phase_peak_mb("block"), found.baseline_mb)


# ---------------------------------------------------------------------------------------------
# d365sim as a child process


@dataclass
class SimProcess:
    """`d365sim serve` running in a child process, RSS-sampled from the moment it starts."""

    args: Sequence[str] = ()
    blob_connection_string: str | None = None
    startup_timeout: float = 900.0
    sample_interval: float = 0.1
    process: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    startup_seconds: float = 0.0
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        self._workdir = tempfile.TemporaryDirectory(prefix="d365sim-bench-")
        command = [sys.executable, "-m", "d365sim.cli", "serve", "--port", "0", *self.args]
        if self.blob_connection_string:
            # Only Azurite's published development key ever goes here, so argv is fine.
            command += ["--blob-connection-string", self.blob_connection_string]
        out = Path(self._workdir.name, "stdout.log")
        err = Path(self._workdir.name, "stderr.log")
        started = time.perf_counter()
        # Files rather than pipes: nobody drains a pipe once the ready line is read.
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        self.sampler = RssSampler(self.process.pid, self.sample_interval).start()
        self.sampler.phase("startup")
        try:
            self.ready = self._wait_ready(out, err)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = round(time.perf_counter() - started, 3)
        return self

    def stop(self) -> None:
        """Interrupt the server (it shuts down cleanly on SIGINT) and reap it; safe twice."""
        process, self.process = self.process, None
        if self.sampler is not None:
            self.sampler.stop()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self, out: Path, err: Path) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    ready = json.loads(line)
                    if isinstance(ready, dict) and ready.get("ready"):
                        return ready
            if self.process.poll() is not None:
                tail = err.read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"d365sim exited with code {self.process.returncode} before it was ready:\n"
                    f"{tail}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"d365sim was not ready within {self.startup_timeout:g} s")

    def token(self) -> str:
        """A bearer token from the simulator's Entra endpoint (client-credentials grant)."""
        response = httpx.post(
            str(self.ready["token_url"]),
            data={
                "grant_type": "client_credentials",
                "client_id": str(self.ready.get("client_id", "sandbox-client")),
                "client_secret": "sandbox-secret",
                "scope": f"{self.url}/.default",
            },
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=timeout,
        )

    def counters(self) -> dict[str, int]:
        """Calls per route the simulator counted (GET /_sim/counters, no token needed)."""
        response = httpx.get(f"{self.url}/_sim/counters", timeout=30)
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json().items()}

    def reset_counters(self) -> None:
        """Zero the simulator's call counters (DELETE /_sim/counters), e.g. after seeding."""
        httpx.delete(f"{self.url}/_sim/counters", timeout=30).raise_for_status()


def d365_calls(counters: Mapping[str, int]) -> int:
    """Requests to D365 routes (OData and DMF actions), leaving out token requests."""
    return sum(n for key, n in counters.items() if " /data" in key)


def token_calls(counters: Mapping[str, int]) -> int:
    """Requests to the simulator's Entra token endpoint (every tenant and version)."""
    return sum(n for key, n in counters.items() if "/oauth2/" in key)


# ---------------------------------------------------------------------------------------------
# DMF export as a client runs it


def dmf_action(client: httpx.Client, action: str, body: Mapping[str, Any]) -> Any:
    """Call one DMF action and return its `value`; raise with D365's message on an error."""
    response = client.post(DMF_ACTIONS + action, json=dict(body))
    if response.status_code >= 400:
        raise RuntimeError(f"{action} answered {response.status_code}: {response.text[:500]}")
    return response.json()["value"]


@dataclass
class ExportRun:
    execution_id: str
    status: str
    seconds: float  # submit → final status
    polls: int


def run_export(
    client: httpx.Client,
    definition_group: str,
    legal_entity: str,
    *,
    poll_seconds: float = 0.1,
    timeout: float = 3600.0,
) -> ExportRun:
    """ExportToPackage, then poll GetExecutionSummaryStatus until the job ends."""
    started = time.perf_counter()
    execution_id = str(
        dmf_action(
            client,
            "ExportToPackage",
            {
                "definitionGroupId": definition_group,
                "packageName": definition_group,
                "executionId": "",
                "reExecute": False,
                "legalEntityId": legal_entity,
            },
        )
    )
    polls = 0
    deadline = time.monotonic() + timeout
    while True:
        polls += 1
        status = str(dmf_action(client, "GetExecutionSummaryStatus", {"executionId": execution_id}))
        if status in DMF_FINAL:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"export {execution_id} still {status} after {timeout:g} s")
        time.sleep(poll_seconds)
    return ExportRun(execution_id, status, round(time.perf_counter() - started, 3), polls)


def download(url: str, dest: Path, chunk: int = MB) -> int:
    """Stream a (SAS) URL to a file without holding it in memory; return the byte count."""
    size = 0
    with httpx.stream("GET", url, timeout=300) as response, dest.open("wb") as target:
        response.raise_for_status()
        for block in response.iter_bytes(chunk):
            target.write(block)
            size += len(block)
    return size


def count_package_rows(path: Path) -> dict[str, int]:
    """Data rows per CSV-Unicode file of a package, read as a stream (header not counted)."""
    counts: dict[str, int] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.lower().endswith(".csv"):
                continue
            with (
                archive.open(info) as raw,
                io.TextIOWrapper(raw, encoding="utf-16", newline="") as text,
            ):
                records = sum(1 for record in csv.reader(text) if record)
            counts[info.filename] = max(0, records - 1)
    return counts


# ---------------------------------------------------------------------------------------------
# d365ct's own D365 adapter, pointed at d365sim

# The secret reaches d365ct the way configuration gives it: as an env: reference.
SIM_SECRET_ENV = "D365CT_BENCH_D365_SECRET"
SIM_SECRET = "sandbox-secret"


def sim_d365_settings(url: str) -> D365Settings:
    """D365Settings for a d365sim at `url`: plain OAuth 2.0 client credentials."""
    from d365ct.config import D365Settings

    os.environ[SIM_SECRET_ENV] = SIM_SECRET
    return D365Settings(
        base_url=url,
        authority=url,
        tenant_id="sandbox",
        client_id="sandbox-client",
        client_secret=f"env:{SIM_SECRET_ENV}",
        auth="oauth2",
    )


@dataclass
class HttpCallCounter:
    """An httpx request hook counting what a client sends: D365, token and other requests.

    It sees every attempt, retries included, as the server does.
    """

    d365: int = 0
    token: int = 0
    other: int = 0

    async def __call__(self, request: httpx.Request) -> None:
        path = request.url.path
        if path.startswith("/data"):
            self.d365 += 1
        elif "/oauth2/" in path:
            self.token += 1
        else:
            self.other += 1

    def reset(self) -> None:
        self.d365 = self.token = self.other = 0


@contextlib.asynccontextmanager
async def d365_http(
    settings: D365Settings,
    *,
    counter: HttpCallCounter | None = None,
    timeout: float = 600.0,
) -> AsyncIterator[D365Http]:
    """d365ct's D365Http (token provider, retries, concurrency limit) on a fresh httpx client."""
    from d365ct.d365.auth import token_provider
    from d365ct.d365.http import D365Http

    hooks: dict[str, list[Callable[..., Any]]] = {"request": [counter]} if counter else {}
    async with httpx.AsyncClient(timeout=timeout, event_hooks=hooks) as client:
        tokens = token_provider(settings, client)
        try:
            yield D365Http(
                client, settings.base_url, tokens, max_concurrency=settings.max_concurrency
            )
        finally:
            await tokens.close()


# ---------------------------------------------------------------------------------------------
# Child processes, so that a peak RSS is the measured code's own


def process_peak_mb() -> float:
    """This process's peak RSS: VmHWM where /proc has it, else ru_maxrss.

    VmHWM belongs to the process's own address space. ru_maxrss of a process started with
    vfork + exec (as subprocess does) also counts its parent's peak at the exec.
    """
    return hwm_mb(os.getpid()) or self_peak_mb()


def run_child(
    module: str, argv: Sequence[str], out: Path, *, interval: float = 0.05
) -> tuple[dict[str, Any], float]:
    """Run `python -m module argv…`, which writes its figures as JSON to `out`.

    Returns those figures and the peak RSS this process sampled from outside meanwhile.
    """
    env = dict(os.environ)
    # The child imports `bench` the way this process did, wherever it was started from.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    out.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", module, *argv, "--out", str(out)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    with RssSampler(process.pid, interval) as sampler:
        code = process.wait()
        sampled = sampler.peak_mb()
    if code != 0:
        raise RuntimeError(f"{module} {' '.join(argv[:1])} exited with code {code}")
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures, sampled
