"""Settings of one simulator instance: identity, latency model, limits and faults.

Every `d365sim serve` flag maps to one field here; the admin API changes faults at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Faults:
    """Faults injected on D365 routes; all off by default."""

    throttle_rps: float = 0.0  # > 0: answer 429 + Retry-After beyond this many requests/second
    error_rate: float = 0.0  # share of requests answered 500/503
    timeout_rate: float = 0.0  # share of requests that hang for timeout_seconds, then 504
    timeout_seconds: float = 30.0
    # GetExecutionSummaryStatus answers 400 this many times right after an import/export starts
    status_bad_requests: int = 0


@dataclass
class SimConfig:
    tenant: str = "sandbox"
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    base_url: str = "http://127.0.0.1:8081"  # what tokens' audience and @odata links name
    default_company: str = "usmf"
    token_seconds: int = 3599
    page_size: int = 10_000
    job_seconds: float = 20.0  # fixed cost of every DMF job
    row_ms: float = 2.0  # plus this much per row
    batch_threads: int = 1  # DMF jobs running at once, like D365 batch capacity
    sas_seconds: int = 1800
    blob_connection_string: str | None = None
    blob_container: str = "dmf"
    seed_products: int = 0
    seed_onhand_rows: int | None = None
    projects_file: Path | None = None
    data_dir: Path | None = None
    faults: Faults = field(default_factory=Faults)

    @property
    def resource(self) -> str:
        """The token audience: the environment URL without a trailing slash."""
        return self.base_url.rstrip("/")
