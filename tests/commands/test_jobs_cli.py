"""`d365ct jobs list|show|retry|cancel` against a real SQLite job store, d365sim and DBOS."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dbos import DBOS, SetWorkflowID
from typer.testing import CliRunner, Result

from d365ct.cli import app
from d365ct.commands.jobs import store_url
from d365ct.engine import launch_engine, shutdown_engine
from d365ct.store import JobStore, RecordOutcome, make_engine, migrate
from tests.d365sim.dmf_client import Dmf, package
from tests.flows.support import SECRET_ENV
from tests.sim_fixtures import RunningSim

IMPORT_GROUP = "d365ct-customer-import"


# -- a DBOS workflow standing in for a running import, so `cancel` has something to stop ---------


@DBOS.step()
def _tick() -> None:
    time.sleep(0.05)


@DBOS.workflow()
def _long_running_job(ticks: int) -> int:
    for _ in range(ticks):
        _tick()
    return ticks


@DBOS.workflow()
def _failing_job() -> None:
    _tick()
    raise RuntimeError("D365 kept answering 503")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working directory: no d365ct.toml or D365CT_ variables from the outside."""
    monkeypatch.chdir(tmp_path)
    for name in ("D365CT_CONFIG", "D365CT_STORE__URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def store_path(workspace: Path) -> Path:
    path = workspace / "jobs.sqlite"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(store_path: Path) -> Iterator[JobStore]:
    engine = make_engine(f"sqlite:///{store_path}")
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture
def config(workspace: Path, store_path: Path) -> Path:
    """Only [store]: reading jobs needs no [d365] section."""
    path = workspace / "store-only.toml"
    path.write_text(f'[store]\nurl = "sqlite:///{store_path}"\n', encoding="utf-8")
    return path


def sim_config(workspace: Path, store_path: Path, sim: RunningSim, **d365: object) -> Path:
    values: dict[str, object] = {
        "base_url": sim.base_url,
        "authority": sim.base_url,
        "auth": "oauth2",
        "tenant_id": "sandbox",
        "client_id": "sandbox-client",
        "client_secret": f"env:{SECRET_ENV}",
        "poll_interval_seconds": 0.1,
        "poll_max_attempts": 300,
        **d365,
    }
    lines = ["[d365]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    lines += ["", "[store]", f'url = "sqlite:///{store_path}"', f'workdir = "{workspace / "work"}"']
    path = workspace / "d365ct.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["jobs", *args])


def add_job(
    store: JobStore,
    job_id: str,
    *,
    state: str = "executing",
    keys: tuple[str, ...] = ("C-1", "C-2"),
    execution_id: str | None = None,
    kind: str = "import",
    flow: str = "customers",
    legal_entity: str = "usmf",
) -> None:
    store.create(
        job_id,
        kind=kind,  # type: ignore[arg-type]
        flow=flow,
        legal_entity=legal_entity,
        definition_group=IMPORT_GROUP if kind == "import" else "d365ct-customers",
        source_keys=keys,
    )
    if state == "pending":
        return
    store.record_execution(job_id, execution_id or f"exec-{job_id}")
    store.set_state(job_id, "triggered")
    store.set_state(job_id, "executing", d365_status="Executing", count_attempt=True)
    if state == "stuck":
        store.mark_stuck(
            job_id, reason="still Executing after 120 status polls", d365_status="Executing"
        )
    elif state in ("succeeded", "partially_succeeded", "failed", "canceled"):
        outcomes = [
            RecordOutcome(
                "Customers V3",
                key,
                "failed" if i == 0 and state != "succeeded" else "ok",
                "Customer group BAD does not exist" if i == 0 and state != "succeeded" else None,
            )
            for i, key in enumerate(keys)
        ]
        store.finish(job_id, state, {"execution_id": execution_id}, outcomes, d365_status="Done")  # type: ignore[arg-type]


def customer_row(account: str, group: str = "10") -> dict[str, str]:
    return {
        "CUSTOMERACCOUNT": account,
        "ORGANIZATIONNAME": f"Fabrikam {account}",
        "CUSTOMERGROUPID": group,
        "SALESCURRENCYCODE": "USD",
        "PRIMARYCONTACTEMAIL": f"{account.lower()}@example.com",
    }


def sim_imports(sim: RunningSim) -> int:
    return int(httpx.get(f"{sim.base_url}/_sim/stats").json()["imports"])


# -- list ----------------------------------------------------------------------------------------


def test_list_shows_a_table_and_filters(store: JobStore, config: Path) -> None:
    add_job(store, "wf-a", state="stuck")
    add_job(store, "wf-b", state="succeeded", legal_entity="demf")
    add_job(store, "wf-c", state="pending", flow="orders")

    result = run("list", "--config", str(config))
    assert result.exit_code == 0, result.output
    for text in ("wf-a", "wf-b", "wf-c", "stuck", "still Executing after 120", "exec-wf-a"):
        assert text in result.stdout

    stuck = run("list", "--state", "stuck", "--config", str(config))
    assert "wf-a" in stuck.stdout and "wf-b" not in stuck.stdout
    by_entity = run("list", "--legal-entity", "DEMF", "--config", str(config))
    assert "wf-b" in by_entity.stdout and "wf-a" not in by_entity.stdout
    by_flow = run("list", "--flow", "orders", "--config", str(config))
    assert "wf-c" in by_flow.stdout and "wf-a" not in by_flow.stdout


def test_list_json_is_an_array_with_iso_timestamps(store: JobStore, config: Path) -> None:
    add_job(store, "wf-1", state="stuck")
    add_job(store, "wf-2", state="pending")
    result = run("list", "--json", "--limit", "1", "--config", str(config))
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.stdout)
    assert [job["id"] for job in jobs] == ["wf-2"]
    both = json.loads(run("list", "--json", "--config", str(config)).stdout)
    stuck = next(job for job in both if job["id"] == "wf-1")
    assert stuck["state"] == "stuck" and stuck["execution_id"] == "exec-wf-1"
    assert stuck["source_keys"] == ["C-1", "C-2"] and stuck["attempts"] == 1
    assert stuck["updated_at"].endswith("+00:00") and stuck["finished_at"] is None


def test_list_rejects_an_unknown_state(store: JobStore, config: Path) -> None:
    result = run("list", "--state", "done", "--config", str(config))
    assert result.exit_code == 2
    assert "unknown state done" in result.output


def test_store_url_from_env_config_file_or_default(
    store: JobStore, store_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_job(store, "wf-env", state="pending")
    # D365CT_STORE__URL wins over the file; the file is found through D365CT_CONFIG
    other = workspace / "other.toml"
    other.write_text('[store]\nurl = "sqlite:///nowhere.sqlite"\n', encoding="utf-8")
    assert store_url(other) == "sqlite:///nowhere.sqlite"
    assert store_url(None) == "sqlite:///d365ct.sqlite"
    monkeypatch.setenv("D365CT_CONFIG", str(other))
    missing = run("list")
    assert missing.exit_code == 1 and "no job store at sqlite:///nowhere.sqlite" in missing.output
    monkeypatch.setenv("D365CT_STORE__URL", f"sqlite:///{store_path}")
    found = run("list", "--json")
    assert found.exit_code == 0, found.output
    assert [job["id"] for job in json.loads(found.stdout)] == ["wf-env"]


def test_a_missing_config_file_is_an_error(workspace: Path) -> None:
    result = run("list", "--config", "absent.toml")
    assert result.exit_code == 1
    assert "configuration file absent.toml not found" in result.output


# -- show ----------------------------------------------------------------------------------------


def test_show_gives_fields_outcomes_and_correlation(store: JobStore, config: Path) -> None:
    add_job(store, "wf-show.p2", state="partially_succeeded", keys=("C-1", "C-2", "C-3"))
    store_text = run("show", "wf-show.p2", "--config", str(config))
    assert store_text.exit_code == 0, store_text.output
    for text in (
        "partially_succeeded",
        "exec-wf-show.p2",
        "Customer group BAD does not exist",
        "3 — 2 ok, 1 failed",
        IMPORT_GROUP,
    ):
        assert text in store_text.stdout

    data = json.loads(run("show", "wf-show.p2", "--json", "--config", str(config)).stdout)
    assert data["state"] == "partially_succeeded" and data["d365_status"] == "Done"
    assert data["correlation"] == {
        "workflow_id": "wf-show",  # a package of a split import belongs to its workflow
        "job_id": "wf-show.p2",
        "execution_id": "exec-wf-show.p2",
        "package_blob": None,
        "source_keys": 3,
    }
    assert data["outcomes"]["total"] == 3 and data["outcomes"]["ok"] == 2
    assert data["outcomes"]["failed_records"] == [
        {
            "entity": "Customers V3",
            "business_key": "C-1",
            "error": "Customer group BAD does not exist",
        }
    ]


def test_d365_texts_with_brackets_are_printed_verbatim(store: JobStore, config: Path) -> None:
    text = "Violation in [dbo].[CUSTTABLE] [/x]"
    add_job(store, "wf-brackets")
    store.finish(
        "wf-brackets",
        "failed",
        None,
        [RecordOutcome("Customers V3", "C-1", "failed", text)],
        error=text,
    )
    for command in ("list", "show"):
        args = [command, "--config", str(config)]
        result = run(*(args if command == "list" else [command, "wf-brackets", *args[1:]]))
        assert result.exit_code == 0, result.output
        assert "[dbo].[CUSTTABLE]" in result.stdout


def test_unknown_job_exits_1(store: JobStore, config: Path) -> None:
    for command in ("show", "retry", "cancel"):
        result = run(command, "nope", "--config", str(config))
        assert result.exit_code == 1, (command, result.output)
        assert "no job 'nope'" in result.stderr


# -- retry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("partially_succeeded", "replayed from the error queue (d365ct errors replay)"),
        ("failed", "never by importing the package again"),
        ("succeeded", "nothing to retry"),
        ("executing", "only stuck jobs, or jobs whose workflow has ended, can be retried"),
    ],
)
def test_retry_refuses_jobs_that_are_not_stuck(
    store: JobStore, config: Path, state: str, message: str
) -> None:
    add_job(store, "wf-r", state=state)
    result = run("retry", "wf-r", "--config", str(config))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    job = store.get("wf-r")
    assert job is not None and job.state == state


def test_retry_needs_the_d365_settings(store: JobStore, config: Path) -> None:
    add_job(store, "wf-nod365", state="stuck")
    result = run("retry", "wf-nod365", "--config", str(config))
    assert result.exit_code == 1
    assert "d365" in result.stderr and "Field required" in result.stderr


def test_retry_resumes_polling_the_same_execution_and_records_outcomes(
    fresh_sim: RunningSim,
    store: JobStore,
    store_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    fresh_sim.config.job_seconds = 1.0
    execution_id = f"d365ct-retry-{uuid.uuid4()}"
    keys = ("JR-1", "JR-2", "JR-3")
    rows = [customer_row("JR-1"), customer_row("JR-2", group="BAD"), customer_row("JR-3")]
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        url = dmf.upload(package(IMPORT_GROUP, [("Customers V3", rows)]), f"{execution_id}.zip")
        started = dmf.value(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId=IMPORT_GROUP,
            executionId=execution_id,
            execute=True,
            overwrite=True,
            legalEntityId="usmf",
        )
    assert started == execution_id
    add_job(store, "wf-stuck", state="stuck", keys=keys, execution_id=execution_id)
    imports = sim_imports(fresh_sim)

    result = run("retry", "wf-stuck", "--config", str(sim_config(workspace, store_path, fresh_sim)))

    assert result.exit_code == 0, result.output
    assert "partially_succeeded" in result.stdout and "2 records ok, 1 failed" in result.stdout
    assert sim_imports(fresh_sim) == imports  # polled, never imported again
    job = store.get("wf-stuck")
    assert job is not None and job.state == "partially_succeeded"
    assert job.d365_status == "PartiallySucceeded" and job.execution_id == execution_id
    assert job.attempts >= 2  # the polls of the resume are counted
    assert job.result == {
        "execution_id": execution_id,
        "succeeded": 2,
        "failed": 1,
        "resumed": True,
    }
    outcomes = {o.business_key: o for o in store.outcomes("wf-stuck")}
    assert {k: o.outcome for k, o in outcomes.items()} == {
        "JR-1": "ok",
        "JR-2": "failed",
        "JR-3": "ok",
    }
    assert outcomes["JR-2"].entity == "Customers V3"
    assert "BAD" in (outcomes["JR-2"].error or "")
    assert "BAD" in (job.last_error or "")
    again = run("retry", "wf-stuck", "--config", str(workspace / "d365ct.toml"))
    assert again.exit_code == 2 and "errors replay" in again.stderr


def test_retry_of_a_stuck_export_downloads_its_package(
    fresh_sim: RunningSim,
    store: JobStore,
    store_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    execution_id = f"d365ct-export-{uuid.uuid4()}"
    with fresh_sim.client() as client:
        Dmf(client).value(
            "ExportToPackage",
            definitionGroupId="d365ct-customers",
            packageName="customers",
            executionId=execution_id,
            reExecute=False,
            legalEntityId="demf",
        )
    add_job(store, "wf-export", state="stuck", keys=(), execution_id=execution_id, kind="export")
    config = sim_config(workspace, store_path, fresh_sim)
    result = run("retry", "wf-export", "--json", "--config", str(config))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["state"] == "succeeded" and data["d365_status"] == "Succeeded"
    package_path = Path(data["result"]["package"])
    assert package_path == workspace / "work" / "exports" / "wf-export.zip"
    assert package_path.stat().st_size > 0


def test_retry_of_an_execution_d365_never_received_stays_stuck(
    fresh_sim: RunningSim,
    store: JobStore,
    store_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    add_job(store, "wf-lost", state="stuck", execution_id="d365ct-never-triggered")
    imports = sim_imports(fresh_sim)
    config = sim_config(workspace, store_path, fresh_sim, poll_interval_seconds=0.02)
    result = run("retry", "wf-lost", "--config", str(config))
    assert result.exit_code == 1, result.output
    assert "still stuck" in result.stdout
    job = store.get("wf-lost")
    assert job is not None and job.state == "stuck"
    assert "does not know execution id d365ct-never-triggered" in (job.last_error or "")
    assert sim_imports(fresh_sim) == imports


def test_retry_that_d365_has_not_finished_stays_stuck(
    fresh_sim: RunningSim,
    store: JobStore,
    store_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    fresh_sim.config.job_seconds = 30
    execution_id = f"d365ct-slow-{uuid.uuid4()}"
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        url = dmf.upload(
            package(IMPORT_GROUP, [("Customers V3", [customer_row("JS-1")])]), f"{execution_id}.zip"
        )
        dmf.value(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId=IMPORT_GROUP,
            executionId=execution_id,
            execute=True,
            overwrite=True,
            legalEntityId="usmf",
        )
    add_job(store, "wf-slow", state="stuck", keys=("JS-1",), execution_id=execution_id)
    config = sim_config(workspace, store_path, fresh_sim, poll_max_attempts=3)
    result = run("retry", "wf-slow", "--config", str(config))
    assert result.exit_code == 1, result.output
    job = store.get("wf-slow")
    assert job is not None and job.state == "stuck"
    assert "after 3 more status polls" in (job.last_error or "")
    assert job.d365_status in ("NotRun", "Executing")


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_marks_an_open_job_canceled_and_warns_about_d365(
    store: JobStore, config: Path
) -> None:
    add_job(store, "wf-x", state="executing")
    result = run("cancel", "wf-x", "--reason", "duplicate batch", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "canceled (was executing)" in result.stdout
    assert "the DMF API cannot cancel it" in " ".join(result.stdout.split())
    job = store.get("wf-x")
    assert job is not None and job.state == "canceled" and job.last_error == "duplicate batch"
    assert job.finished_at is not None

    again = run("cancel", "wf-x", "--config", str(config))
    assert again.exit_code == 2 and "already canceled" in again.stderr


def test_cancel_of_a_pending_job_says_nothing_was_triggered(store: JobStore, config: Path) -> None:
    add_job(store, "wf-p", state="pending")
    result = run("cancel", "wf-p", "--json", "--config", str(config))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["state"] == "canceled" and data["result"] == {"canceled_from": "pending"}
    assert data["execution_id"] is None


def test_cancel_stops_the_dbos_workflow(store: JobStore, store_path: Path, config: Path) -> None:
    url = f"sqlite:///{store_path}"
    launch_engine(url, polling_interval_sec=0.05)
    try:
        with SetWorkflowID("wf-running"):
            handle = DBOS.start_workflow(_long_running_job, 2000)
        add_job(store, "wf-running", state="executing")
        busy = run("retry", "wf-running", "--config", str(config))
        assert busy.exit_code == 2, busy.output
        assert "workflow wf-running is PENDING, still working on it" in busy.stderr
        result = run("cancel", "wf-running", "--config", str(config))
        assert result.exit_code == 0, result.output
        assert "wf-running canceled (was PENDING)" in result.stdout
        assert handle.get_status().status == "CANCELLED"
        job = store.get("wf-running")
        assert job is not None and job.state == "canceled"
    finally:
        shutdown_engine(workflow_completion_timeout_sec=5)


def test_retry_takes_over_an_active_job_whose_workflow_ended(
    fresh_sim: RunningSim,
    store: JobStore,
    store_path: Path,
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, fresh_sim.config.client_secret)
    execution_id = f"d365ct-orphan-{uuid.uuid4()}"
    with fresh_sim.client() as client:
        dmf = Dmf(client)
        url = dmf.upload(
            package(IMPORT_GROUP, [("Customers V3", [customer_row("JO-1")])]),
            f"{execution_id}.zip",
        )
        dmf.value(
            "ImportFromPackage",
            packageUrl=url,
            definitionGroupId=IMPORT_GROUP,
            executionId=execution_id,
            execute=True,
            overwrite=True,
            legalEntityId="usmf",
        )
    launch_engine(f"sqlite:///{store_path}", polling_interval_sec=0.05)
    try:
        with SetWorkflowID("wf-orphan"):
            handle = DBOS.start_workflow(_failing_job)
        with pytest.raises(RuntimeError):
            handle.get_result()
    finally:
        shutdown_engine(workflow_completion_timeout_sec=5)
    add_job(store, "wf-orphan", state="executing", keys=("JO-1",), execution_id=execution_id)

    result = run(
        "retry", "wf-orphan", "--config", str(sim_config(workspace, store_path, fresh_sim))
    )

    assert result.exit_code == 0, result.output
    job = store.get("wf-orphan")
    assert job is not None and job.state == "succeeded" and job.d365_status == "Succeeded"
    assert [(o.business_key, o.outcome) for o in store.outcomes("wf-orphan")] == [("JO-1", "ok")]
