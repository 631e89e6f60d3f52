"""The error taxonomy at adapter boundaries: flows decide, adapters classify.

TransientError means "try again later"; PermanentError means "this record goes to the error queue".
"""

from __future__ import annotations


class D365ctError(Exception):
    """Base of every error d365ct raises on purpose."""


class TransientError(D365ctError):
    """A failure that may succeed on retry: throttling, 5xx, timeouts, a job still running."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(D365ctError):
    """A failure retrying cannot fix: bad data, a rejected package, an unknown key."""


class CredentialError(PermanentError):
    """The identity provider or the target refused our credentials (after one refresh)."""


class ConfigurationError(D365ctError):
    """Invalid configuration; the message names the key and the problem."""
