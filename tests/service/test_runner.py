"""`d365ct run` as a real process against d365sim: it serves health, readiness, metrics and the
dashboard on its port, and stops cleanly on SIGTERM; it refuses to start without a token."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from dbos import DBOS, SetWorkflowID

from d365ct.config import Settings
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.errors import ConfigurationError
from d365ct.service.configdoc import toml_value
from d365ct.service.runner import (
    SCHEDULE_PREFIX,
    Schedule,
    _consumer_background,
    _intake,
    apply_schedules,
    check_service_auth,
    dbos_step_history,
)
from tests.flows.support import SECRET_ENV, sim_settings
from tests.service.conftest import TOKEN, TOKEN_ENV, make_settings
from tests.sim_fixtures import RunningSim

ROOT = Path(__file__).resolve().parents[2]
INTAKE_TOKEN = "intake-token-abcdef123456"


@DBOS.step()
def svc_add_one(x: int) -> int:
    return x + 1


@DBOS.step()
def svc_double(x: int) -> int:
    return x * 2


@DBOS.workflow()
def svc_workflow(x: int) -> int:
    return svc_double(svc_add_one(x))


@DBOS.workflow()
def svc_tick(scheduled_at: datetime, context: Any) -> None:
    """A scheduled workflow, as a flow's delta sync will be."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(data: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
        out.append("")
    return "\n".join(out)


def _start(config: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "d365ct.cli", "run", "--config", str(config), *args],
        cwd=config.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(base: str, proc: subprocess.Popen[str], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"d365ct run exited early with {proc.returncode}:\n{err[-4000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"d365ct run did not answer /healthz within {seconds} s")


@pytest.mark.slow
def test_run_serves_and_stops_on_sigterm(fresh_sim: RunningSim, tmp_path: Path) -> None:
    port = _free_port()
    d365 = sim_settings(fresh_sim.base_url).model_dump(mode="json")
    config = tmp_path / "d365ct.toml"
    config.write_text(
        _toml(
            {
                "d365": d365,
                "store": {
                    "url": f"sqlite:///{tmp_path / 'd365ct.sqlite'}",
                    "workdir": str(tmp_path / "work"),
                },
                "intake": {"kind": "http", "token": "env:D365CT_TEST_INTAKE_TOKEN"},
                "service": {"bind": f"127.0.0.1:{port}", "token": f"env:{TOKEN_ENV}"},
            }
        )
    )
    env = {
        **os.environ,
        SECRET_ENV: fresh_sim.config.client_secret,
        TOKEN_ENV: TOKEN,
        "D365CT_TEST_INTAKE_TOKEN": INTAKE_TOKEN,
    }
    proc = _start(config, env, "--shutdown-timeout", "5")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["d365_token"]["ok"] is True
        assert ready.json()["checks"]["database"]["ok"] is True
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/metrics").status_code == 401
        scraped = httpx.get(f"{base}/metrics", headers=bearer)
        assert scraped.status_code == 200 and "d365ct_store_up 1.0" in scraped.text
        assert httpx.get(f"{base}/api/jobs", headers=bearer).json() == {"jobs": []}
        page = httpx.get(f"{base}/", headers=bearer)
        assert page.status_code == 200 and "Overview" in page.text
        # The webhook intake is mounted, with its own token.
        assert httpx.post(f"{base}/intake/commercetools", content=b"{}").status_code == 401
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    assert took < 10, f"shutdown took {took:.1f} s"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=1)
    # Logs are JSON lines, and no secret reached them.
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "d365ct service stopped" for r in records)
    assert all("timestamp" in r and "level" in r for r in records)
    for secret in (TOKEN, INTAKE_TOKEN, fresh_sim.config.client_secret):
        assert secret not in err and secret not in out


def test_run_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "d365ct.toml"
    config.write_text(
        _toml(
            {
                "d365": {"base_url": "http://127.0.0.1:9", "client_id": "c"},
                "store": {"url": f"sqlite:///{tmp_path / 'd365ct.sqlite'}"},
            }
        )
    )
    proc = _start(config, dict(os.environ))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "service.token is not set" in err and "--insecure-no-auth" in err
    assert not (tmp_path / "d365ct.sqlite").exists()  # refused before touching anything


def test_insecure_mode_only_on_loopback(tmp_path: Path, secrets_env: None) -> None:
    def settings(bind: str, token: bool = False) -> Settings:
        service: dict[str, Any] = {"bind": bind}
        if token:
            service["token"] = f"env:{TOKEN_ENV}"
        return make_settings(tmp_path, service=service)

    for bind in ("0.0.0.0:8080", "10.1.2.3:8080", "example.com:80"):
        with pytest.raises(ConfigurationError, match="loopback"):
            check_service_auth(settings(bind), insecure_no_auth=True)
    for bind in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080"):
        check_service_auth(settings(bind), insecure_no_auth=True)
    with pytest.raises(ConfigurationError, match=r"service\.token is not set"):
        check_service_auth(settings("127.0.0.1:8080"), insecure_no_auth=False)
    check_service_auth(settings("0.0.0.0:8080", token=True), insecure_no_auth=False)


def test_unresolvable_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=TOKEN_ENV):
        check_service_auth(
            make_settings(tmp_path, service={"token": f"env:{TOKEN_ENV}"}),
            insecure_no_auth=False,
        )


def test_step_history_comes_from_dbos(tmp_path: Path) -> None:
    shutdown_engine()
    assert dbos_step_history("anything") is None  # no engine in this process
    launch_engine(f"sqlite:///{tmp_path / 'steps.sqlite'}", polling_interval_sec=0.05)
    try:
        with SetWorkflowID("svc-steps-1"):
            assert svc_workflow(1) == 4
        steps = dbos_step_history("svc-steps-1")
        assert steps is not None
        assert [s.name.rsplit(".", 1)[-1] for s in steps] == ["svc_add_one", "svc_double"]
        assert all(s.started_at is not None and s.completed_at is not None for s in steps)
        assert all(s.error is None for s in steps)
        assert dbos_step_history("no-such-workflow") == []

        apply_schedules([Schedule("nightly", "0 3 * * *", svc_tick, {"le": "usmf"})])
        names = [s["schedule_name"] for s in DBOS.list_schedules()]
        assert names == [f"{SCHEDULE_PREFIX}nightly"]
        apply_schedules([])  # a schedule no longer configured is removed
        assert DBOS.list_schedules(schedule_name_prefix=SCHEDULE_PREFIX) == []
    finally:
        shutdown_engine()


class FakeConsumer:
    source = "fake"

    def __init__(self) -> None:
        self.stopped = asyncio.Event()
        self.ran = False

    async def run(self) -> None:
        self.ran = True
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


def test_queue_consumers_run_with_the_app_and_stop_with_it() -> None:
    consumer = FakeConsumer()

    async def scenario() -> None:
        async with _consumer_background(consumer)():  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            assert consumer.ran and not consumer.stopped.is_set()
        assert consumer.stopped.is_set()

    asyncio.run(scenario())


def test_intake_kinds(tmp_path: Path, secrets_env: None) -> None:
    from d365ct.intake import Inbox
    from d365ct.store import make_engine, migrate

    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    migrate(url)
    inbox = Inbox(make_engine(url))
    routers, background = _intake(make_settings(tmp_path), inbox)
    assert len(routers) == 1 and background == []
    sqs = make_settings(tmp_path, intake={"kind": "sqs", "sqs_queue_url": "http://q/1"})
    routers, background = _intake(sqs, inbox)
    assert routers == [] and len(background) == 1
    with pytest.raises(ConfigurationError, match="sqs_queue_url"):
        _intake(make_settings(tmp_path, intake={"kind": "sqs"}), inbox)
    inbox.close()
