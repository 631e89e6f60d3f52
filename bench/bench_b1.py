"""B1: catalog re-sync of 100,000 products after 1 % of them changed in D365.

Setup (not measured as the benchmark): d365sim seeded with the products, the commercetools mock
with one project, `d365ct setup`, and an initial load (the first `sync_catalog` into an empty
project; its calls and seconds are reported apart as `initial_load`). Then the ProductName of a
seeded random 1 % of the source company's released products is changed by OData PATCH.

Ours is the re-sync: `sync_catalog` (not --full), which compares content hashes and writes only
what changed. Naive re-sends every product regardless of change: it reads and maps the whole
catalog as ours does, looks the products up in bulk for their versions, and POSTs one update per
product that sets its name, slug and every variant attribute and publishes; the writes run on a
seeded random sample and are extrapolated to all products.

Calls are counted at the HTTP layer, by an httpx request hook on the flow's own client, and
cross-checked against the flow's summary; d365sim counts its own calls too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import psutil

from bench.common import (
    SIM_SECRET,
    SIM_SECRET_ENV,
    SimProcess,
    d365_calls,
    mb,
    per_second,
    progress,
    result_line,
    scaled,
    token_calls,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from d365ct.config import Settings
    from d365ct.flows.catalog import SyncSummary

BENCH_ID = "B1"
FULL_PRODUCTS = 100_000  # released products of the source company at scale 1
CHANGED_SHARE = 0.01
FULL_NAIVE_SAMPLE = 2_000  # products the naive way really re-sends at scale 1
MIN_PRODUCTS = 100
MIN_NAIVE_SAMPLE = 20
SOURCE = "usmf"
PROJECT_KEY = "bench-b1"
MAX_WRITES_PER_CHANGED = 1.05
GOAL_RATIO = 50.0
GOAL = (
    "catalog re-sync of 100,000 products after 1 % changed: commercetools write calls <= 1.05 per"
    " changed record, 0 for unchanged; >= 50x fewer calls than re-sending every product"
)

ROOT = Path(__file__).resolve().parent.parent
CT_MOCK_SCRIPT = ROOT / "tools" / "ct-mock-server.mjs"
CT_MOCK_PACKAGE = ROOT / "node_modules" / "@labdigital" / "commercetools-mock"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def run(scale: float) -> dict[str, Any]:
    products = scaled(FULL_PRODUCTS, scale, minimum=MIN_PRODUCTS)
    changed_count = max(1, round(products * CHANGED_SHARE))
    sample_size = scaled(FULL_NAIVE_SAMPLE, scale, minimum=MIN_NAIVE_SAMPLE)
    progress(f"{BENCH_ID}: starting d365sim with {products:,} products and the commercetools mock")
    with (
        SimProcess(["--seed-products", str(products)]) as sim,
        CtMockProcess() as mock,
        tempfile.TemporaryDirectory(prefix="d365ct-bench-b1-") as workdir,
    ):
        settings = bench_settings(sim.url, mock.url, PROJECT_KEY, workdir)
        from d365ct.store import make_engine, migrate

        migrate(settings.store.url)
        engine = make_engine(settings.store.url)
        try:
            source_items = _count_source_items(sim)
            initial = _initial_load(sim, mock, settings, engine)
            changed = _change_products(sim, changed_count)
            ours = _ours(sim, mock, settings, engine, changed)
            naive = asyncio.run(_naive(settings, sample_size))
        finally:
            engine.dispose()
    ours["source_items"] = source_items
    ours["initial_load"] = initial
    ours["d365_changes"] = changed.figures()
    ratio = round(float(naive["calls"]) / max(int(ours["calls"]), 1), 1)
    met = (
        ours["writes"] <= MAX_WRITES_PER_CHANGED * changed.count
        and ours["writes_to_unchanged"] == 0
        and ratio >= GOAL_RATIO
        and ours["calls_match_summary"] is True
        and ours["changes_arrived"] is True
        and ours["failed"] == 0
        and initial["failed"] == 0
    )
    return result_line(
        BENCH_ID, ours=ours, naive=naive, ratio=ratio, goal=GOAL, met=met, scale=scale
    )


# ---------------------------------------------------------------------------------------------
# The commercetools mock as a child process


@dataclass
class CtMockProcess:
    """`node tools/ct-mock-server.mjs --port 0 --auth`, as the tests run it."""

    startup_timeout: float = 30.0
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Self:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("Node.js is not installed: the commercetools mock needs it")
        if not CT_MOCK_PACKAGE.is_dir():
            raise RuntimeError(f"{CT_MOCK_PACKAGE} is missing: run make install")
        self._workdir = tempfile.TemporaryDirectory(prefix="ct-mock-bench-")
        out = Path(self._workdir.name, "stdout.log")
        err = Path(self._workdir.name, "stderr.log")
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                # A larger heap than Node's default: 100,000 products with their variants.
                [node, "--max-old-space-size=8192", str(CT_MOCK_SCRIPT), "--port", "0", "--auth"],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while time.monotonic() < deadline:
                for line in out.read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError):
                        ready = json.loads(line)
                        if isinstance(ready, dict) and ready.get("ready"):
                            self.url = str(ready["url"])
                            return self
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
            tail = err.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the commercetools mock did not start: {tail}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def cpu_seconds(self) -> float:
        return _process_cpu(self.pid)

    def rss_mb(self) -> float:
        return mb(int(psutil.Process(self.pid).memory_info().rss))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """Linux: the kernel stops the mock when the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _process_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ---------------------------------------------------------------------------------------------
# Settings: d365sim, the mock (scope in the query), a SQLite store in a temporary directory


def bench_settings(sim_url: str, ct_url: str, project_key: str, workdir: str) -> Settings:
    from d365ct.config import CONCERNS, Settings, client_scopes

    os.environ[SIM_SECRET_ENV] = SIM_SECRET  # every client secret below is this env: reference
    secret = {"client_secret": f"env:{SIM_SECRET_ENV}"}
    clients = {
        concern: {
            "client_id": f"{concern}-client",
            **secret,
            "scopes": client_scopes(concern, project_key),
        }
        for concern in CONCERNS
    }
    data: dict[str, Any] = {
        "d365": {
            "base_url": sim_url,
            "tenant_id": "sandbox",
            "client_id": "sandbox-client",
            "client_secret": f"env:{SIM_SECRET_ENV}",
            "auth": "oauth2",
            "authority": sim_url,
            "request_timeout_seconds": 600,
        },
        "store": {"url": f"sqlite:///{workdir}/d365ct.sqlite", "workdir": f"{workdir}/work"},
        "commercetools": {
            "project_key": project_key,
            "api_url": ct_url,
            "auth_url": ct_url,
            "scope_in_query": True,
            "clients": clients,
        },
        "legal_entities": [
            {"id": "usmf", "currency": "USD", "stores": ["us-store"], "countries": ["US"]},
            {"id": "demf", "currency": "EUR", "stores": ["de-store"], "countries": ["DE"]},
        ],
        "warehouses": [
            {"legal_entity": le, "warehouse": wh, "supply_channel": f"{le}-{wh}".lower()}
            for le, wh in (
                ("usmf", "11"),
                ("usmf", "12"),
                ("usmf", "21"),
                ("demf", "DE-01"),
                ("demf", "DE-02"),
            )
        ],
    }
    return Settings.model_validate(data)


# ---------------------------------------------------------------------------------------------
# Counting at the HTTP layer


@dataclass
class CallLog:
    """httpx hooks on the flow's client: calls per target and method, and when they happened.

    The request hook sees every attempt, retries included, as the servers do.
    """

    ct_url: str
    project_key: str
    d365: int = 0
    d365_token: int = 0
    ct_token: int = 0
    ct: Counter[str] = field(default_factory=Counter)  # project API calls by method
    ct_errors: Counter[int] = field(default_factory=Counter)  # status >= 400, by status
    post_targets: list[str] = field(default_factory=list)  # last path segment of each POST
    ct_latency: dict[str, float] = field(default_factory=dict)  # seconds to response, by method
    first_ct: float | None = None
    last_ct: float | None = None
    last_d365: float | None = None
    _sent: dict[int, float] = field(default_factory=dict)

    def hooks(self) -> dict[str, list[object]]:
        return {"request": [self.on_request], "response": [self.on_response]}

    def _is_ct(self, url: httpx.URL) -> bool:
        return str(url).startswith(self.ct_url)

    async def on_request(self, request: httpx.Request) -> None:
        path = request.url.path
        if self._is_ct(request.url):
            if path.startswith(f"/{self.project_key}/"):
                now = time.perf_counter()
                self.first_ct = self.first_ct if self.first_ct is not None else now
                self._sent[id(request)] = now
                self.ct[request.method] += 1
                if request.method == "POST":
                    self.post_targets.append(path.rsplit("/", 1)[-1])
            elif path.startswith("/oauth/"):
                self.ct_token += 1
        elif path.startswith("/data"):
            self.d365 += 1
        elif "/oauth2/" in path:
            self.d365_token += 1

    async def on_response(self, response: httpx.Response) -> None:
        url = response.request.url
        now = time.perf_counter()
        if self._is_ct(url):
            if url.path.startswith(f"/{self.project_key}/"):
                self.last_ct = now
                sent = self._sent.pop(id(response.request), None)
                if sent is not None:
                    method = response.request.method
                    self.ct_latency[method] = self.ct_latency.get(method, 0.0) + now - sent
                if response.status_code >= 400:
                    self.ct_errors[response.status_code] += 1
        elif url.path.startswith("/data"):
            self.last_d365 = now

    @property
    def ct_total(self) -> int:
        return sum(self.ct.values())

    @property
    def ct_writes(self) -> int:
        return sum(n for method, n in self.ct.items() if method != "GET")

    def ms_per_call(self) -> dict[str, float]:
        """Mean time from request to response headers, by method (queueing at the server in)."""
        return {
            m: round(1000 * self.ct_latency.get(m, 0.0) / n, 2) for m, n in self.ct.items() if n
        }


# ---------------------------------------------------------------------------------------------
# Setup: source item count, the initial load, the 1 % change in D365


def _count_source_items(sim: SimProcess) -> int:
    with sim.client() as client:
        response = client.get(
            "/data/ReleasedProductsV2/$count",
            params={"cross-company": "true", "$filter": f"dataAreaId eq '{SOURCE}'"},
        )
        response.raise_for_status()
        return int(response.text)


@dataclass
class LoadProgress:
    """The flow's progress as a note on stderr every `every` seconds (long loads only)."""

    label: str
    every: float = 60.0
    total: int = 0
    done: int = 0
    _started: float = field(default_factory=time.perf_counter)
    _last: float = field(default_factory=time.perf_counter)

    def add_total(self, count: int) -> None:
        self.total += count

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            progress(
                f"{BENCH_ID}: {self.label}: {self.done:,} of {self.total:,} products"
                f" after {now - self._started:.0f} s"
            )


def _sync(
    settings: Settings, engine: sa.Engine, log: CallLog, label: str
) -> tuple[SyncSummary, float, float]:
    """One `sync_catalog` run: its summary, wall seconds and this process's CPU seconds."""
    from d365ct.flows.catalog import sync_catalog

    note = LoadProgress(label)
    cpu = time.process_time()
    started = time.perf_counter()
    summary = asyncio.run(sync_catalog(settings, engine, progress=note, event_hooks=log.hooks()))
    seconds = time.perf_counter() - started
    return summary, seconds, time.process_time() - cpu


def _initial_load(
    sim: SimProcess, mock: CtMockProcess, settings: Settings, engine: sa.Engine
) -> dict[str, Any]:
    from d365ct.flows.setup import run_setup

    report = asyncio.run(run_setup(settings))
    if not report.ok:
        raise RuntimeError(f"d365ct setup failed: {report.as_dict()}")
    progress(f"{BENCH_ID}: setup done; initial load into the empty project")
    log = CallLog(mock.url, PROJECT_KEY)
    mock_cpu = mock.cpu_seconds()
    sim.reset_counters()
    summary, seconds, cpu = _sync(settings, engine, log, "initial load")
    figures: dict[str, Any] = {
        "records": summary.records,
        "created": summary.created,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "calls": log.ct_total,
        "calls_by_method": dict(log.ct),
        "calls_summary": sum(summary.ct_calls.values()),
        "d365_calls": d365_calls(sim.counters()),
        "seconds": round(seconds, 3),
        "records_per_s": per_second(summary.records, seconds),
        "cpu_seconds": round(cpu, 3),
        "mock_cpu_seconds": round(mock.cpu_seconds() - mock_cpu, 3),
        "mock_rss_mb": mock.rss_mb(),
        "setup_calls": dict(report.ct_calls),
    }
    progress(
        f"{BENCH_ID}: initial load created {summary.created:,} of {summary.records:,} products"
        f" in {log.ct_total:,} calls, {seconds:.1f} s (this process {cpu:.1f} s CPU)"
    )
    return figures


@dataclass
class Changes:
    """The D365 side of the 1 % change: which items, and what it cost (setup, not measured)."""

    items: list[str]
    new_names: dict[str, str]
    calls: int
    read_calls: int
    seconds: float

    @property
    def count(self) -> int:
        return len(self.items)

    def figures(self) -> dict[str, Any]:
        return {
            "changed_items": self.count,
            "patch_calls": self.calls,
            "read_calls": self.read_calls,
            "seconds": round(self.seconds, 3),
        }


def sample_of(values: Sequence[str], size: int, salt: str) -> list[str]:
    """A seeded random sample of `size` values, sorted (all of them when size is larger).

    Random rather than every n-th value: d365sim makes every 5th item a product master, so a
    fixed stride would pick only plain products (or only masters).
    """
    if size >= len(values):
        return sorted(values)
    return sorted(random.Random(f"{BENCH_ID}/{salt}/{len(values)}").sample(list(values), size))


def changed_name(name: str) -> str:
    """A different ProductName within D365's 60 characters."""
    return f"{name[:52]} (rev 2)"


def _change_products(sim: SimProcess, count: int) -> Changes:
    started = time.perf_counter()
    sim.reset_counters()
    names: dict[str, str] = {}
    with sim.client() as client:
        url: str | None = "/data/ReleasedProductsV2"
        params: dict[str, str] | None = {
            "cross-company": "true",
            "$filter": f"dataAreaId eq '{SOURCE}'",
            "$select": "ItemNumber,ProductName",
        }
        while url:
            response = client.get(url, params=params)
            response.raise_for_status()
            body = response.json()
            names.update((str(r["ItemNumber"]), str(r["ProductName"])) for r in body["value"])
            url, params = body.get("@odata.nextLink"), None
        items = sample_of(sorted(names), count, "changed")
        new_names = {item: changed_name(names[item]) for item in items}
        for item, name in new_names.items():
            response = client.patch(
                f"/data/ReleasedProductsV2(dataAreaId='{SOURCE}',ItemNumber='{item}')",
                params={"cross-company": "true"},
                json={"ProductName": name},
            )
            if response.status_code != 204:
                raise RuntimeError(
                    f"PATCH of {item} answered {response.status_code}: {response.text}"
                )
    counters = sim.counters()
    patches = sum(n for key, n in counters.items() if key.startswith("PATCH "))
    changes = Changes(
        items, new_names, patches, d365_calls(counters) - patches, time.perf_counter() - started
    )
    progress(f"{BENCH_ID}: changed ProductName of {count:,} items in D365 ({patches:,} PATCHes)")
    return changes


# ---------------------------------------------------------------------------------------------
# Ours: the incremental re-sync


def _ours(
    sim: SimProcess,
    mock: CtMockProcess,
    settings: Settings,
    engine: sa.Engine,
    changed: Changes,
) -> dict[str, Any]:
    from d365ct.flows.catalog import FLOW
    from d365ct.store.sync_state import SyncStateStore

    state = SyncStateStore(engine)
    # The commercetools products of the changed items: every part of a split master.
    stored = state.items(FLOW)
    changed_items = set(changed.items)
    changed_keys = sorted(k for k in stored if _item_of(k) in changed_items)
    changed_ids = {str(stored[k].ct_id) for k in changed_keys}

    log = CallLog(mock.url, PROJECT_KEY)
    sim.reset_counters()
    mock_cpu, sim_cpu = mock.cpu_seconds(), _process_cpu(sim.pid)
    progress(f"{BENCH_ID}: ours, the re-sync of {len(stored):,} products")
    summary, seconds, cpu = _sync(settings, engine, log, "re-sync")
    mock_cpu, sim_cpu = mock.cpu_seconds() - mock_cpu, _process_cpu(sim.pid) - sim_cpu
    counters = sim.counters()
    started = time.perf_counter() - seconds

    arrived = asyncio.run(_names_arrived(settings, changed, changed_keys))
    writes = log.ct_writes
    writes_to_unchanged = sum(1 for target in log.post_targets if target not in changed_ids)
    records = summary.records
    d365_read_s = (log.last_d365 - started) if log.last_d365 is not None else 0.0
    ct_s = (log.last_ct - log.first_ct) if log.first_ct is not None and log.last_ct else 0.0
    ours: dict[str, Any] = {
        "method": "sync_catalog (not --full): content hash per product against sync_state, bulk"
        " lookup of the changed ones (one GET per 250), one POST update each",
        "records": records,
        "changed_records": changed.count,
        "changed_products": len(changed_keys),
        "updated": summary.updated,
        "created": summary.created,
        "unchanged": summary.unchanged,
        "failed": summary.failed,
        "calls": log.ct_total,
        "writes": writes,
        "reads": log.ct.get("GET", 0),
        "calls_by_method": dict(log.ct),
        "calls_summary": dict(summary.ct_calls),
        "calls_match_summary": dict(log.ct) == {k: v for k, v in summary.ct_calls.items() if v},
        "writes_per_changed_record": round(writes / max(changed.count, 1), 4),
        "writes_allowed": math.floor(MAX_WRITES_PER_CHANGED * changed.count),
        "writes_to_unchanged": writes_to_unchanged,
        "ct_error_responses": dict(log.ct_errors),
        "ct_ms_per_call": log.ms_per_call(),
        "ct_token_calls": log.ct_token,
        "d365_calls": d365_calls(counters),
        "d365_calls_hook": log.d365,
        "d365_calls_summary": summary.d365_calls,
        "d365_token_calls": token_calls(counters),
        "seconds": round(seconds, 3),
        "records_per_s": per_second(records, seconds),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_record": round(1000 * cpu / max(records, 1), 4),
        "cpu_ms_per_changed_record": round(1000 * cpu / max(changed.count, 1), 2),
        "phase_seconds": {
            "d365_read": round(d365_read_s, 3),
            "plan_and_hash_compare": round(max(0.0, seconds - d365_read_s - ct_s), 3),
            "commercetools": round(ct_s, 3),
        },
        "mock_cpu_seconds": round(mock_cpu, 3),
        "d365sim_cpu_seconds": round(sim_cpu, 3),
        "changes_arrived": arrived,
    }
    progress(
        f"{BENCH_ID}: ours re-synced {records:,} products in {log.ct_total:,} commercetools calls"
        f" ({writes:,} writes for {changed.count:,} changed) in {seconds:.2f} s,"
        f" {cpu:.2f} s CPU"
    )
    return ours


def _item_of(key: str) -> str:
    """The D365 item of a product key: the key itself, or `item` of a split part `item-N`."""
    item, _, part = key.rpartition("-")
    return item if item and part.isdigit() else key


async def _names_arrived(settings: Settings, changed: Changes, keys: Sequence[str]) -> bool:
    """Each changed product holds its new name in commercetools (read after the measurement)."""
    from d365ct.runtime import adapters

    async with adapters(settings) as ad:
        found = await ad.commercetools("catalog").find_by_keys("products", list(keys))
    for key in keys:
        item = _item_of(key)
        product = found.get(key)
        if product is None:
            return False
        data = product["masterData"]["current"]
        if data["name"].get("en") != changed.new_names[item]:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Naive: re-send every product regardless of change


def resend_actions(draft: Mapping[str, Any], publish: bool) -> list[dict[str, Any]]:
    """Update actions that set everything the draft holds, whether it changed or not."""
    actions: list[dict[str, Any]] = [
        {"action": "changeName", "name": draft["name"]},
        {"action": "changeSlug", "slug": draft["slug"]},
    ]
    for variant in [draft["masterVariant"], *draft["variants"]]:
        for attribute in variant.get("attributes") or ():
            actions.append(
                {
                    "action": "setAttribute",
                    "sku": variant["sku"],
                    "name": attribute["name"],
                    "value": attribute["value"],
                }
            )
    if publish:
        actions.append({"action": "publish"})
    return actions


async def _naive(settings: Settings, sample_size: int) -> dict[str, Any]:
    from d365ct.d365.odata import quote_literal
    from d365ct.flows.catalog import BATCH, RESOURCE, read_variants
    from d365ct.mapping.catalog import (
        PRODUCT_FIELDS,
        TRANSLATION_FIELDS,
        CatalogOptions,
        ProductPlan,
        product_plans,
        translations_by_product,
    )
    from d365ct.runtime import adapters

    options = CatalogOptions.from_settings(settings.catalog)
    ct_settings = settings.require_commercetools()
    log = CallLog(ct_settings.api_url, ct_settings.project_key)
    cpu = time.process_time()
    started = time.perf_counter()
    async with adapters(settings, event_hooks=log.hooks()) as ad:
        # Read and map the whole catalog, as ours does (measured in full, not sampled).
        variants = await read_variants(ad.odata, SOURCE)
        languages = " or ".join(
            f"LanguageId eq {quote_literal(lang)}" for lang, _ in options.languages
        )
        names = translations_by_product(
            [
                row
                async for row in ad.odata.rows(
                    "ProductTranslations", select=list(TRANSLATION_FIELDS), filter=languages
                )
            ],
            options,
        )
        plans: dict[str, ProductPlan] = {}
        async for row in ad.odata.rows(
            "ReleasedProductsV2", select=list(PRODUCT_FIELDS), legal_entity=SOURCE
        ):
            item = str(row.get("ItemNumber") or "").strip()
            number = str(row.get("ProductNumber") or item).strip()
            for plan in product_plans(row, variants.get(item, ()), names.get(number, {}), options):
                plans[plan.key] = plan
        read_seconds = time.perf_counter() - started
        read_cpu = time.process_time() - cpu
        d365 = log.d365

        sample = sample_of(sorted(plans), sample_size, "naive")
        progress(
            f"{BENCH_ID}: naive, one POST per product regardless of change, on {len(sample):,}"
            f" of {len(plans):,} products"
        )
        ct = ad.commercetools("catalog")
        write_cpu = time.process_time()
        write_started = time.perf_counter()
        written = 0
        lookup_seconds = update_seconds = 0.0
        for first in range(0, len(sample), BATCH):
            keys = sample[first : first + BATCH]
            tick = time.perf_counter()
            found = await ct.find_by_keys(RESOURCE, keys)  # the versions an update needs
            tock = time.perf_counter()
            bodies = await asyncio.gather(
                *(
                    ct.update(
                        RESOURCE,
                        str(found[key]["id"]),
                        int(found[key]["version"]),
                        resend_actions(plans[key].draft, options.publish),
                    )
                    for key in keys
                )
            )
            lookup_seconds += tock - tick
            update_seconds += time.perf_counter() - tock
            written += len(bodies)
        write_seconds = time.perf_counter() - write_started
        write_cpu = time.process_time() - write_cpu
    factor = len(plans) / max(len(sample), 1)
    measured = log.ct_total
    measured_reads = log.ct.get("GET", 0)
    # Writes scale with the products; the version lookups with the batches of all of them.
    writes = round(log.ct_writes * factor)
    reads = math.ceil(len(plans) / BATCH)
    lookups_all = lookup_seconds * reads / max(measured_reads, 1)
    updates_all = update_seconds * factor
    cpu_all = read_cpu + write_cpu * factor
    naive: dict[str, Any] = {
        "method": "read and map every product, bulk lookup for versions (one GET per 250), one"
        " POST update per product setting name, slug and every attribute, then publish",
        "records": len(plans),
        "extrapolated_from": len(sample),
        "calls": writes + reads,
        "writes": writes,
        "reads": reads,
        "seconds": round(read_seconds + lookups_all + updates_all, 3),
        "phase_seconds": {
            "d365_read_and_map": round(read_seconds, 3),
            "commercetools_lookups": round(lookups_all, 3),
            "commercetools_updates": round(updates_all, 3),
        },
        "cpu_seconds": round(cpu_all, 3),
        "cpu_ms_per_record": round(1000 * cpu_all / max(len(plans), 1), 4),
        "d365_calls": d365,
        "measured_calls": measured,
        "measured_calls_by_method": dict(log.ct),
        "measured_calls_client": sum(ct.calls.values()),
        "measured_writes": written,
        "measured_write_seconds": round(write_seconds, 3),
        "measured_lookup_seconds": round(lookup_seconds, 3),
        "measured_update_seconds": round(update_seconds, 3),
        "ct_ms_per_call": log.ms_per_call(),
        "ct_error_responses": dict(log.ct_errors),
    }
    progress(
        f"{BENCH_ID}: naive sent {measured:,} calls in {write_seconds:.2f} s for {len(sample):,}"
        f" products; extrapolated to {naive['calls']:,} calls, {naive['seconds']:,} s"
    )
    return naive
