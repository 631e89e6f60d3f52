"""Authentication of the dashboard and JSON API with the service token (``[service] token``):
a bearer header for scripts and scrapers, an HMAC-signed session cookie for browsers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from d365ct.config import ServiceSettings
from d365ct.errors import ConfigurationError

__all__ = [
    "COOKIE_NAME",
    "SESSION_SECONDS",
    "Auth",
    "LoginRequiredError",
    "safe_next",
]

COOKIE_NAME: Final = "d365ct_session"
SESSION_SECONDS: Final = 12 * 3600  # a working day; then log in again
_SESSION_VERSION: Final = "v1"
_UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

TokenProvider = Callable[[], str | None]


class LoginRequiredError(Exception):
    """A page was asked for without a valid session: the app redirects to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def safe_next(value: str | None) -> str:
    """Where to go after login: a path on this site only (never //host or a full URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


@dataclass
class Auth:
    """Checks requests against the service token, resolved on every check so a rotated secret
    applies at once (and every session signed with the old one ends with it).

    ``disabled`` is only for ``d365ct run --insecure-no-auth`` on a loopback address.
    """

    token_provider: TokenProvider
    disabled: bool = False
    clock: Callable[[], float] = time.time

    @classmethod
    def from_settings(cls, settings: ServiceSettings, *, disabled: bool = False) -> Auth:
        def provide() -> str | None:
            return None if settings.token is None else settings.token.resolve()

        return cls(provide, disabled=disabled)

    def _token(self) -> str:
        try:
            token = self.token_provider()
        except ConfigurationError as exc:
            raise HTTPException(503, f"service token cannot be resolved: {exc}") from exc
        if not token:
            # Secure by default: no token means nobody gets in, not everybody.
            raise HTTPException(503, "no service token is configured ([service] token)")
        return token

    # -- credentials -----------------------------------------------------------------------

    def token_matches(self, given: str) -> bool:
        # compare_digest: the time taken must not tell how much of a guess was right.
        return hmac.compare_digest(given.encode("utf-8"), self._token().encode("utf-8"))

    def _signature(self, token: str, issued: int) -> str:
        # Keyed by the token, so the cookie proves knowledge of it without carrying it.
        message = f"d365ct-session:{_SESSION_VERSION}:{issued}".encode()
        return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()

    def session_cookie(self) -> str:
        issued = int(self.clock())
        return f"{_SESSION_VERSION}.{issued}.{self._signature(self._token(), issued)}"

    def session_valid(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        version, _, rest = cookie.partition(".")
        issued_text, _, signature = rest.partition(".")
        if version != _SESSION_VERSION or not issued_text.isdigit():
            return False
        issued = int(issued_text)
        now = self.clock()
        if issued > now + 60 or now - issued > SESSION_SECONDS:
            return False
        expected = self._signature(self._token(), issued)
        return hmac.compare_digest(signature.encode("ascii", "replace"), expected.encode("ascii"))

    def bearer_valid(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """A cookie-authenticated write must come from our own pages (defence in depth beside
        SameSite=Strict): an Origin or Referer naming another host is refused."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source or source == "null":
            return source is None
        host = request.headers.get("host", "")
        return urlsplit(source).netloc == host

    def authenticated(self, request: Request) -> bool:
        """A valid bearer token or session, without refusing anything (for public endpoints
        that tell an operator more than an anonymous caller)."""
        return (
            self.disabled
            or self.bearer_valid(request)
            or self.session_valid(request.cookies.get(COOKIE_NAME))
        )

    # -- FastAPI dependencies --------------------------------------------------------------

    def require_api(self, request: Request) -> None:
        """JSON API and /metrics: a bearer token, or a browser session (the dashboard links to
        CSV downloads); 401 otherwise."""
        if self.disabled or self.bearer_valid(request):
            return
        if self.session_valid(request.cookies.get(COOKIE_NAME)):
            if request.method in _UNSAFE_METHODS and not self._same_origin(request):
                raise HTTPException(403, "cross-site request refused")
            return
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )

    def require_page(self, request: Request) -> None:
        """Dashboard pages: a session cookie (or a bearer header); else off to the login form."""
        if self.disabled:
            return
        if self.session_valid(request.cookies.get(COOKIE_NAME)):
            if request.method in _UNSAFE_METHODS and not self._same_origin(request):
                raise HTTPException(403, "cross-site request refused")
            return
        if self.bearer_valid(request):
            return
        next_path = request.url.path
        if request.url.query:
            next_path += "?" + request.url.query
        if request.method != "GET":
            next_path = request.headers.get("hx-current-url") or "/"
            next_path = urlsplit(next_path).path or "/"
        raise LoginRequiredError(safe_next(next_path))
