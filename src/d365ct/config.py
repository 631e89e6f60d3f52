"""Configuration: one TOML file, every key overridable by `D365CT_<SECTION>__<KEY>` variables.

Secrets are `env:NAME` or `file:PATH` references, resolved on use and never printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
)
from pydantic_core import core_schema

from d365ct.errors import ConfigurationError

ENV_PREFIX = "D365CT_"


class SecretRef(str):
    """A reference to a secret; str() shows the reference, `.resolve()` reads the value."""

    __slots__ = ()

    def resolve(self) -> str:
        kind, _, target = self.partition(":")
        if kind == "env":
            value = os.environ.get(target)
            if value is None:
                raise ConfigurationError(f"secret reference {self}: variable {target} is not set")
            return value
        if kind == "file":
            try:
                return Path(target).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigurationError(f"secret reference {self}: {exc.strerror}") from exc
        raise ConfigurationError(f"secret reference {self!s} must start with env: or file:")

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(cls._validate, core_schema.str_schema())

    @classmethod
    def _validate(cls, text: str) -> SecretRef:
        if not text.startswith(("env:", "file:")):
            # a literal secret in a file or variable is how secrets leak: refuse it
            raise ValueError("must be a reference: env:NAME or file:PATH, never the secret itself")
        return cls(text)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class D365Settings(_Section):
    base_url: str  # e.g. https://contoso.operations.dynamics.com (on-premises: …/namespaces/AXSF)
    authority: str = "https://login.microsoftonline.com"
    tenant_id: str = ""
    client_id: str
    # client_secret | certificate | managed_identity: Entra ID via azure-identity;
    # oauth2: plain client-credentials against token_url (AD FS, d365sim over http)
    auth: Literal["client_secret", "certificate", "managed_identity", "oauth2"] = "client_secret"
    client_secret: SecretRef | None = None
    certificate_path: Path | None = None
    token_url: str | None = None  # oauth2 only; default {authority}/{tenant}/oauth2/v2.0/token
    request_timeout_seconds: float = 60.0
    max_concurrency: int = Field(8, ge=1)
    rate_per_second: float | None = Field(None, gt=0)
    max_attempts: int = Field(6, ge=1)
    poll_interval_seconds: float = Field(30.0, gt=0)
    poll_max_attempts: int = Field(120, ge=1)
    package_max_bytes: int = Field(100 * 1024 * 1024, ge=64 * 1024)
    import_concurrency_per_legal_entity: int = Field(1, ge=1)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def scope(self) -> str:
        return f"{self.base_url}/.default"

    @property
    def effective_token_url(self) -> str:
        return self.token_url or f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"


class StoreSettings(_Section):
    url: str = "sqlite:///d365ct.sqlite"


class Settings(_Section):
    d365: D365Settings
    store: StoreSettings = StoreSettings()


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) < 2:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return data


def load_settings(path: Path | None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    data = _apply_env(data, dict(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc
