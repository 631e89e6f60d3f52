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
    model_validator,
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
    # oauth2 only: send `resource=<this>` instead of `scope` (AD FS and Entra v1 endpoints want
    # the environment URL without /namespaces/AXSF and without a trailing slash)
    token_resource: str | None = None
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
    workdir: Path = Path(".d365ct-work")  # packages being built or downloaded


class CommercetoolsClientSettings(_Section):
    """One API client per concern (C2), with least-privilege scopes."""

    client_id: str
    client_secret: SecretRef
    scopes: tuple[str, ...] = ()


CONCERNS = ("catalog", "inventory", "orders", "customers")

# The least privilege each concern's API client needs (C2), by the HTTP API's endpoint scopes;
# each takes a ":<project key>" suffix. catalog: products, product types and channels
# (manage_products), standalone prices, and customer groups, which `setup` and the price sync
# look up and create when a price agreement names one. inventory: inventory entries and the
# supply channels they point at, both secured by manage_products.
CLIENT_SCOPES: dict[str, tuple[str, ...]] = {
    "catalog": ("manage_products", "manage_standalone_prices", "manage_customer_groups"),
    "inventory": ("manage_products",),
    "orders": ("manage_orders",),
    "customers": ("manage_customers",),
}


def client_scopes(concern: str, project_key: str) -> list[str]:
    """The least-privilege scopes of one concern's API client for a project."""
    return [f"{scope}:{project_key}" for scope in CLIENT_SCOPES[concern]]


class CommercetoolsSettings(_Section):
    project_key: str
    api_url: str = "https://api.europe-west1.gcp.commercetools.com"
    auth_url: str = "https://auth.europe-west1.gcp.commercetools.com"
    # The real token endpoint takes `scope` in the form body; the local mock only in the query.
    scope_in_query: bool = False
    clients: dict[str, CommercetoolsClientSettings] = Field(default_factory=dict)
    max_concurrency: int = Field(16, ge=1)

    @field_validator("clients")
    @classmethod
    def _known_concerns(
        cls, value: dict[str, CommercetoolsClientSettings]
    ) -> dict[str, CommercetoolsClientSettings]:
        unknown = sorted(set(value) - set(CONCERNS))
        if unknown:
            raise ValueError(f"unknown client concern(s) {unknown}; known: {list(CONCERNS)}")
        return value

    def client(self, concern: str) -> CommercetoolsClientSettings:
        try:
            return self.clients[concern]
        except KeyError:
            raise ConfigurationError(
                f"commercetools.clients.{concern} is not configured "
                f"(client_id, client_secret, scopes)"
            ) from None


class LegalEntitySettings(_Section):
    id: str  # D365 dataAreaId
    currency: str
    stores: tuple[str, ...] = ()  # commercetools Store keys routed to this legal entity
    countries: tuple[str, ...] = ()  # ISO country codes routed here when no store matches
    guest_customer_account: str | None = None  # D365 account for guest orders

    @field_validator("id")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()  # D365 answers dataAreaId in lower case


class WarehouseSettings(_Section):
    legal_entity: str
    warehouse: str  # InventoryWarehouseId
    supply_channel: str  # commercetools Channel key (role InventorySupply)


class FieldSource(_Section):
    """Where one commercetools value comes from: a D365 field (with a default when it is empty
    and a lookup table for its values) or a constant `value`."""

    field: str | None = None  # D365 field of the source row
    value: str | None = None  # a constant instead of a field
    default: str | None = None  # when the field is empty; unset: the attribute is left out
    lookup: dict[str, str] = Field(default_factory=dict)  # D365 value → commercetools value

    @model_validator(mode="after")
    def _field_or_value(self) -> FieldSource:
        if (self.field is None) == (self.value is None):
            raise ValueError("give either field (a D365 field) or value (a constant), not both")
        return self


class CatalogMappingSettings(_Section):
    """Overrides of the default product mapping (declarative, then the hook)."""

    # D365 ReleasedProductsV2 field whose text is the name in the default locale (default
    # ProductName); translations still fill the other locales
    name_field: str | None = None
    # D365 field whose text the slug is made from (default: the name of each locale)
    slug_field: str | None = None
    # commercetools text attribute → D365 field name, or a table {field, default, lookup} or
    # {value}; set on every variant, and added to the product type by `d365ct setup`
    attributes: dict[str, str | FieldSource] = Field(default_factory=dict)
    # more ReleasedProductsV2 fields to read, for the hook
    fields: tuple[str, ...] = ()
    # "package.module:function" called as function(draft, row) -> draft per product draft
    hook: str | None = None
    # text attributes the hook sets, which `d365ct setup` adds to the product type
    hook_attributes: tuple[str, ...] = ()

    @field_validator("hook")
    @classmethod
    def _hook_spec(cls, value: str | None) -> str | None:
        return _check_hook_spec(value)


class InventoryMappingSettings(_Section):
    """Overrides of the default inventory entry mapping."""

    # "package.module:function" called as function(draft, source) -> draft per InventoryEntry;
    # its quantityOnStock is what is compared and written
    hook: str | None = None

    @field_validator("hook")
    @classmethod
    def _hook_spec(cls, value: str | None) -> str | None:
        return _check_hook_spec(value)


class PriceMappingSettings(_Section):
    """Overrides of the default standalone price mapping."""

    # "package.module:function" called as function(draft, row) -> draft per StandalonePrice;
    # it may change value, validity, customerGroup, country and channel, not key or sku
    hook: str | None = None

    @field_validator("hook")
    @classmethod
    def _hook_spec(cls, value: str | None) -> str | None:
        return _check_hook_spec(value)


def _check_hook_spec(value: str | None) -> str | None:
    if value is None:
        return None
    module, sep, function = value.strip().partition(":")
    if not sep or not module or not function:
        raise ValueError(f"'{value}' must name a function as package.module:function")
    return value.strip()


class CatalogSettings(_Section):
    product_type: str = "d365-product"  # commercetools ProductType key
    variant_limit: int = Field(100, ge=1)  # commercetools' documented default per product
    publish: bool = True
    # D365 LanguageId → commercetools locale of LocalizedString names and slugs
    languages: dict[str, str] = Field(default_factory=lambda: {"en-us": "en", "de": "de"})
    source_legal_entity: str = "usmf"  # the company whose released products form the catalog
    # `d365ct run`: cron (UTC; 5 fields, or 6 with seconds first) of the delta sync; "" = off
    schedule: str = "*/30 * * * *"
    mapping: CatalogMappingSettings = CatalogMappingSettings()


class InventorySettings(_Section):
    entity_set: str = "WarehousesOnHandV2"  # the seed brief calls it InventOnHandV2
    quantity_field: str = "AvailableOnHandQuantity"  # seed brief: AvailablePhysicalQuantity
    export_project: str = "d365ct-onhand"
    # `d365ct run`: cron (UTC) of the inventory delta sync; "" = off
    schedule: str = "*/5 * * * *"
    # `d365ct run`: cron (UTC) of the reconciliation against a DMF export of on-hand; "" = off
    reconcile_schedule: str = "0 2 * * *"
    mapping: InventoryMappingSettings = InventoryMappingSettings()


class PriceSettings(_Section):
    # `d365ct run`: cron (UTC) of the price delta sync; "" = off
    schedule: str = "15,45 * * * *"
    mapping: PriceMappingSettings = PriceMappingSettings()


class IntakeSettings(_Section):
    kind: Literal["http", "sqs", "servicebus"] = "http"
    token: SecretRef | None = None  # bearer token for POST /intake/commercetools
    # AWS SQS
    sqs_queue_url: str | None = None
    sqs_region: str = "eu-west-1"
    sqs_endpoint_url: str | None = None  # e.g. a local moto server
    sqs_wait_seconds: int = Field(20, ge=0, le=20)
    sqs_visibility_timeout: int = Field(60, ge=1)
    # Azure Service Bus
    servicebus_connection: SecretRef | None = None
    servicebus_queue: str | None = None
    # Which message types are acted on; others are recorded and acknowledged.
    customer_update_types: tuple[str, ...] = (
        "CustomerCreated",
        "CustomerAddressAdded",
        "CustomerAddressChanged",
        "CustomerAddressRemoved",
        "CustomerCompanyNameSet",
    )


class ServiceSettings(_Section):
    bind: str = "127.0.0.1:8080"  # dashboard, JSON API, webhook intake, health, metrics
    token: SecretRef | None = None  # bearer/session token for the dashboard and JSON API

    @property
    def host(self) -> str:
        return self.bind.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])


class OrderSettings(_Section):
    max_orders: int = Field(500, ge=1)  # micro-batch: orders per package, per legal entity
    max_wait_seconds: float = Field(60.0, ge=0)  # … or this long, whichever comes first
    definition_group: str = "d365ct-orders"
    posted_state: str = "d365-posted"  # commercetools State key after a successful posting
    shipping_as: Literal["charge", "line"] = "line"
    shipping_item: str = "SHIPPING"  # D365 item used when shipping is posted as a line
    shipping_charge_code: str = Field("FREIGHT", min_length=1, max_length=10)
    order_number_prefix: str = "CT"  # scheme for orders that arrive without an orderNumber


class CustomerSettings(_Section):
    definition_group: str = "d365ct-customers-import"
    account_prefix: str = "CT"  # deterministic D365 account: prefix + hash of the customer id
    customer_group: str = "30"  # D365 customer group of web customers


class Settings(_Section):
    d365: D365Settings
    store: StoreSettings = StoreSettings()
    commercetools: CommercetoolsSettings | None = None
    legal_entities: tuple[LegalEntitySettings, ...] = ()
    warehouses: tuple[WarehouseSettings, ...] = ()
    catalog: CatalogSettings = CatalogSettings()
    inventory: InventorySettings = InventorySettings()
    prices: PriceSettings = PriceSettings()
    intake: IntakeSettings = IntakeSettings()
    service: ServiceSettings = ServiceSettings()
    orders: OrderSettings = OrderSettings()
    customers: CustomerSettings = CustomerSettings()

    def legal_entity(self, entity_id: str) -> LegalEntitySettings:
        for entity in self.legal_entities:
            if entity.id == entity_id.lower():
                return entity
        raise ConfigurationError(f"legal entity '{entity_id}' is not in [[legal_entities]]")

    def require_commercetools(self) -> CommercetoolsSettings:
        if self.commercetools is None:
            raise ConfigurationError("[commercetools] is not configured")
        return self.commercetools


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
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from exc
    from d365ct.hooks import load_hooks  # imports user code: only once the file is valid

    load_hooks(settings)  # a hook that cannot be imported stops the start, naming its key
    return settings
