"""Structured JSON logs for the service (structlog, with the standard library routed through it),
with a processor that redacts secrets before any line is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog
from pydantic import BaseModel

from d365ct.config import SecretRef, Settings
from d365ct.errors import D365ctError

__all__ = [
    "REDACTED",
    "Redactor",
    "configure_logging",
    "secret_refs",
]

REDACTED: Final = "[redacted]"
# Shorter values are not registered: redacting every "ab" in every log line would make the logs
# unreadable, and a secret that short is no secret (d365ct check flags weak ones).
MIN_SECRET_LENGTH: Final = 4

# Key names whose values are secrets whatever they hold. Matched on the last word(s) of the key,
# so `token` and `client_secret` are hidden but `token_url` and `secret_ref_name` are not.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:token|access_token|refresh_token|id_token|secret|client_secret|password|"
    r"passwd|authorization|cookie|set_cookie|api_key|apikey|connection_string|sas|signature)$",
    re.IGNORECASE,
)
# Secrets that travel inside text: bearer tokens, SAS signatures in blob URLs, passwords in URLs.
_TEXT_PATTERNS: Final = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\1 {REDACTED}"),
    (re.compile(r"(?i)([?&]sig=)[^&\s\"']+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+@"), rf"\1{REDACTED}@"),
    (re.compile(r"(?i)(AccountKey=|SharedAccessKey=)[^;\s\"']+"), rf"\1{REDACTED}"),
)


_REFERENCE = re.compile(r"^(?:env|file):\S+$")


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def _hidden(key: object, value: Any) -> bool:
    """A secret-named key hides its value, unless the value is a reference (env:/file:), which
    names where the secret is and is what the configuration page must show."""
    if not _is_secret_key(key) or value is None:
        return False
    return not (isinstance(value, str) and _REFERENCE.match(value))


class Redactor:
    """Hides registered secret values and secret-looking keys in log events and shown text.

    Use it as a structlog processor (it is callable as one) and, through ``redact_text``, on
    any text the dashboard shows that came from outside (error texts, check details).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for value in secrets:
            self.register(value)

    def register(self, value: str) -> None:
        """Hide ``value`` wherever it appears from now on."""
        if len(value) < MIN_SECRET_LENGTH or value in self._values:
            return
        self._values.add(value)
        # Longest first, so a secret containing another is hidden whole.
        ordered = sorted(self._values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact_text(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        for pattern, replacement in _TEXT_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def redact(self, value: Any, *, depth: int = 0) -> Any:
        """``value`` with secrets hidden: strings scanned, mappings and sequences walked."""
        if depth > 20:  # a cycle or a pathological payload: stop rather than recurse forever
            return value
        if isinstance(value, SecretRef):
            return str(value)  # a reference names where the secret is, never the secret
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, bytes):
            return self.redact_text(value.decode("utf-8", errors="replace"))
        if isinstance(value, Mapping):
            return {
                k: REDACTED if _hidden(k, v) else self.redact(v, depth=depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(v, depth=depth + 1) for v in value]
        if isinstance(value, BaseException):
            return self.redact_text(f"{type(value).__name__}: {value}")
        return value

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if key == "event":
                event_dict[key] = self.redact(event_dict[key])
            elif _hidden(key, event_dict[key]):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.redact(event_dict[key])
        return event_dict


def secret_refs(model: BaseModel) -> list[tuple[str, SecretRef]]:
    """Every SecretRef in a settings tree, with its dotted key; found by walking the model, so a
    secret field added to the settings later is covered without a list to update."""
    found: list[tuple[str, SecretRef]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, SecretRef):
            found.append((path, value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), f"{path}.{name}" if path else name)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(model, "")
    return found


def redactor_for(settings: Settings) -> Redactor:
    """A redactor knowing every secret of ``settings`` that resolves now (others cannot leak)."""
    redactor = Redactor()
    for _key, ref in secret_refs(settings):
        try:
            redactor.register(ref.resolve())
        except D365ctError:
            continue  # unresolvable: d365ct check and start-up report it by its key
    return redactor


def configure_logging(
    redactor: Redactor, *, level: int | str = logging.INFO, stream: TextIO | None = None
) -> None:
    """JSON lines on ``stream`` (stderr) for structlog and standard-library loggers alike.

    uvicorn, DBOS and our adapters log through ``logging``: a ProcessorFormatter sends their
    records through the same chain, so they are JSON and redacted too.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),  # logging's extra={...} fields become JSON keys
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # Last before rendering: tracebacks and formatted messages are redacted too.
            redactor,
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn and DBOS attach console handlers of their own; ours must be the only output.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dbos"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # DBOS adds its console handler at launch only when its logger has none: give it one that
    # writes nothing, so its records keep flowing to ours.
    logging.getLogger("dbos").addHandler(logging.NullHandler())
