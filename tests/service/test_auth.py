"""Authentication: bearer tokens for the API and /metrics, a signed session cookie for pages."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from d365ct.config import Settings
from d365ct.service.app import create_app
from d365ct.service.auth import COOKIE_NAME, SESSION_SECONDS, Auth, safe_next
from tests.service.conftest import TOKEN, TOKEN_ENV, make_settings

PROTECTED_API = ["/api/jobs", "/api/errors", "/api/reports", "/api/config", "/api/overview"]
PAGES = ["/", "/jobs", "/errors", "/reports", "/config"]


@pytest.mark.parametrize("path", [*PROTECTED_API, "/metrics", "/api/openapi.json"])
def test_api_needs_the_bearer_token(anon: TestClient, path: str) -> None:
    missing = anon.get(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = anon.get(path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    basic = anon.get(path, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert anon.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_no_public_api_docs(anon: TestClient, path: str) -> None:
    """FastAPI's own schema and docs routes are off: the schema is only behind the token."""
    assert anon.get(path).status_code in (303, 404)
    assert "openapi" not in anon.get(path).text.lower()


def test_api_writes_need_the_token(anon: TestClient) -> None:
    assert anon.post("/api/errors/1/replay").status_code == 401
    assert anon.post("/api/errors/1/resolve").status_code == 401
    assert anon.post("/api/check").status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login(anon: TestClient, path: str) -> None:
    response = anon.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


def test_login_redirect_keeps_the_query(anon: TestClient) -> None:
    response = anon.get("/jobs?state=stuck&flow=orders")
    assert response.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Dstuck%26flow%3Dorders"


def test_htmx_requests_get_hx_redirect(anon: TestClient) -> None:
    response = anon.post("/errors/1/replay", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["hx-redirect"].startswith("/login")


def test_health_static_and_login_are_public(anon: TestClient) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").status_code == 200
    assert anon.get("/static/htmx.min.js").status_code == 200
    assert anon.get("/static/style.css").status_code == 200
    page = anon.get("/login")
    assert page.status_code == 200
    assert 'type="password"' in page.text


def test_wrong_login_is_refused_without_a_cookie(anon: TestClient) -> None:
    response = anon.post("/login", data={"token": "guess", "next": "/jobs"})
    assert response.status_code == 401
    assert "Wrong token" in response.text
    assert COOKIE_NAME not in response.cookies
    assert "set-cookie" not in response.headers


def test_login_sets_a_signed_httponly_strict_cookie(anon: TestClient) -> None:
    response = anon.post("/login", data={"token": TOKEN, "next": "/jobs?state=stuck"})
    assert response.status_code == 303
    assert response.headers["location"] == "/jobs?state=stuck"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/" in cookie
    assert TOKEN not in cookie  # an HMAC of the token, never the token
    # The session opens pages and the API (the dashboard links to CSV downloads).
    assert anon.get("/jobs").status_code == 200
    assert anon.get("/api/jobs").status_code == 200


def test_login_next_cannot_leave_the_site(anon: TestClient) -> None:
    response = anon.post("/login", data={"token": TOKEN, "next": "//evil.example/x"})
    assert response.headers["location"] == "/"
    for bad in ("https://evil.example/", "//evil", "/\\evil", "", "jobs"):
        assert safe_next(bad) == "/"
    assert safe_next("/errors?status=all") == "/errors?status=all"


def test_tampered_or_foreign_cookie_is_refused(anon: TestClient) -> None:
    anon.cookies.set(COOKIE_NAME, "v1.9999999999.deadbeef")
    assert anon.get("/").status_code == 303
    forged = Auth(lambda: "another-token").session_cookie()
    anon.cookies.set(COOKIE_NAME, forged)
    assert anon.get("/").status_code == 303
    assert anon.get("/api/jobs").status_code == 401


def test_sessions_expire_and_end_with_the_token() -> None:
    now = [1_000_000.0]
    token = [TOKEN]
    auth = Auth(lambda: token[0], clock=lambda: now[0])
    cookie = auth.session_cookie()
    assert auth.session_valid(cookie)
    now[0] += SESSION_SECONDS + 1
    assert not auth.session_valid(cookie)
    now[0] = 1_000_000.0
    token[0] = "rotated-token-value"
    assert not auth.session_valid(cookie)  # rotating the token logs everybody out


def test_cross_site_writes_with_the_cookie_are_refused(browser: TestClient) -> None:
    foreign = browser.post(
        "/errors/1/resolve", headers={"Origin": "http://evil.example"}, data={"note": "x"}
    )
    assert foreign.status_code == 403
    api = browser.post("/api/errors/1/resolve", headers={"Origin": "http://evil.example"})
    assert api.status_code == 403
    same = browser.post("/errors/1/resolve", headers={"Origin": "http://testserver"})
    assert same.status_code == 303  # on to the error list (entry 1 does not exist here)


def test_logout_clears_the_session(browser: TestClient) -> None:
    response = browser.post("/logout")
    assert response.status_code == 303
    assert f'{COOKIE_NAME}=""' in response.headers["set-cookie"]
    browser.cookies.clear()
    assert browser.get("/").status_code == 303


def test_no_token_configured_means_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_engine: sa.Engine
) -> None:
    settings = make_settings(tmp_path, service={"bind": "127.0.0.1:8080"})
    app = create_app(settings, store_engine=store_engine, readiness={})
    with TestClient(app, follow_redirects=False) as client:
        assert client.get("/api/jobs", headers={"Authorization": "Bearer "}).status_code == 503
        assert client.post("/login", data={"token": "anything"}).status_code == 503


def test_unresolvable_token_is_a_clear_503(
    settings: Settings, store_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV)
    app = create_app(settings, store_engine=store_engine, readiness={})
    with TestClient(app) as client:
        response = client.get("/api/jobs", headers={"Authorization": "Bearer x"})
    assert response.status_code == 503
    assert TOKEN_ENV in response.json()["detail"]


def test_insecure_mode_opens_pages_without_login(
    settings: Settings, store_engine: sa.Engine
) -> None:
    app = create_app(settings, store_engine=store_engine, auth_disabled=True, readiness={})
    with TestClient(app, follow_redirects=False) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "no authentication" in page.text
        assert client.get("/api/jobs").status_code == 200
        assert client.get("/login").status_code == 303


def test_security_headers(browser: TestClient) -> None:
    response = browser.get("/")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
