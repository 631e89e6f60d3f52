"""Secret redaction in logs (structlog and standard-library records alike) and shown text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from d365ct.config import SecretRef
from d365ct.service.logging import (
    REDACTED,
    Redactor,
    configure_logging,
    redactor_for,
    secret_refs,
)
from tests.service.conftest import D365_SECRET, TOKEN, make_settings


def test_processor_hides_registered_values_everywhere() -> None:
    redactor = Redactor(["p4ssw0rd-value", "ab"])  # "ab" is too short to register
    event = {
        "event": "token refresh failed for p4ssw0rd-value",
        "detail": {"nested": ["x p4ssw0rd-value y", {"deeper": "p4ssw0rd-value"}]},
        "count": 3,
        "about": "ab stays",
    }
    out = redactor(None, "info", event)
    assert out["event"] == f"token refresh failed for {REDACTED}"
    assert out["detail"] == {"nested": [f"x {REDACTED} y", {"deeper": REDACTED}]}
    assert out["count"] == 3
    assert out["about"] == "ab stays"


def test_processor_hides_secret_named_keys() -> None:
    out = Redactor()(
        None,
        "info",
        {
            "event": "request",
            "token": "abc123456",
            "client_secret": "zzz",
            "Authorization": "Bearer abc",
            "password": "pw",
            "headers": {"authorization": "Basic Zm9vOmJhcg==", "accept": "json"},
            "token_url": "https://login.example/token",
            "secret_ref": "env:D365_CLIENT_SECRET",
            "client_secret_ref": None,
        },
    )
    assert out["token"] == out["client_secret"] == out["password"] == REDACTED
    assert out["Authorization"] == REDACTED
    assert out["headers"] == {"authorization": REDACTED, "accept": "json"}
    assert out["token_url"] == "https://login.example/token"
    # A reference names where the secret lives: it is what operators need to see.
    assert Redactor().redact({"client_secret": "env:D365_CLIENT_SECRET"}) == {
        "client_secret": "env:D365_CLIENT_SECRET"
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJhbGciOi.payload.sig", f"Authorization: Bearer {REDACTED}"),
        (
            "PUT https://acct.blob.core.windows.net/c/p.zip?sv=2021&se=2025&sig=AbC%2Bd=&sp=w",
            f"PUT https://acct.blob.core.windows.net/c/p.zip?sv=2021&se=2025&sig={REDACTED}&sp=w",
        ),
        (
            "connect postgresql://d365ct:hunter2@db/d365ct failed",
            f"connect postgresql://d365ct:{REDACTED}@db/d365ct failed",
        ),
        (
            "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=k3y=;EntityPath=q",
            f"Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey={REDACTED};EntityPath=q",
        ),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_text_patterns(text: str, expected: str) -> None:
    assert Redactor().redact_text(text) == expected


def test_secret_refs_walks_the_whole_settings_tree(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        commercetools={
            "project_key": "p",
            "clients": {"orders": {"client_id": "o", "client_secret": "file:/run/ct"}},
        },
        intake={"token": "env:INTAKE"},
    )
    found = dict(secret_refs(settings))
    assert found == {
        "d365.client_secret": SecretRef("env:D365CT_TEST_D365_SECRET"),
        "commercetools.clients.orders.client_secret": SecretRef("file:/run/ct"),
        "intake.token": SecretRef("env:INTAKE"),
        "service.token": SecretRef("env:D365CT_TEST_SERVICE_TOKEN"),
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_configured_logs_are_json_and_redacted(
    tmp_path: Path, secrets_env: None, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging(redactor_for(make_settings(tmp_path)), stream=stream)
    structlog.get_logger("d365ct.test").info(
        "token obtained", value=TOKEN, secret=D365_SECRET, job="j-1"
    )
    logging.getLogger("uvicorn.error").warning("client sent %s", f"Bearer {TOKEN}")
    try:
        raise RuntimeError(f"D365 refused {D365_SECRET}")
    except RuntimeError:
        logging.getLogger("d365ct.flows").exception("step failed", extra={"flow": "orders"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    text = stream.getvalue()
    assert TOKEN not in text and D365_SECRET not in text
    first, second, third = lines
    assert first["event"] == "token obtained" and first["value"] == REDACTED
    assert first["job"] == "j-1" and first["level"] == "info" and "timestamp" in first
    assert second["event"] == f"client sent Bearer {REDACTED}"
    assert second["logger"] == "uvicorn.error"
    assert third["flow"] == "orders" and "RuntimeError" in third["exception"]
