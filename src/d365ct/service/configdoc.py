"""The configuration reference, generated from the settings models themselves: the commented
example TOML (`d365ct config example`) and docs/configuration.md, so neither can drift.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import tokenize
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from d365ct import config as config_module
from d365ct.config import CONCERNS, ENV_PREFIX, SecretRef, Settings, client_scopes

__all__ = ["EXAMPLES", "EXTRA_HELP", "FieldDoc", "example_toml", "field_docs", "markdown"]

# Values shown for keys that have no default (required) or default to unset. "*" stands for
# any key of a table (a commercetools concern).
EXAMPLES: Final[dict[str, Any]] = {
    "d365.base_url": "https://contoso.operations.dynamics.com",
    "d365.tenant_id": "00000000-0000-0000-0000-000000000000",
    "d365.client_id": "11111111-1111-1111-1111-111111111111",
    "d365.client_secret": "env:D365_CLIENT_SECRET",
    "d365.certificate_path": "/etc/d365ct/d365-client.pem",
    "d365.token_url": "https://adfs.contoso.com/adfs/oauth2/token",
    "d365.token_resource": "https://contoso.operations.dynamics.com",
    "d365.rate_per_second": 20.0,
    "commercetools.project_key": "acme",
    "commercetools.clients.*.client_id": "…",
    "commercetools.clients.*.client_secret": "env:CT_{CONCERN}_SECRET",
    "legal_entities.id": "usmf",
    "legal_entities.currency": "USD",
    "legal_entities.stores": ["us-store"],
    "legal_entities.countries": ["US"],
    "legal_entities.guest_customer_account": "US-GUEST",
    "warehouses.legal_entity": "usmf",
    "warehouses.warehouse": "11",
    "warehouses.supply_channel": "usmf-11",
    "intake.token": "env:D365CT_INTAKE_TOKEN",
    "intake.sqs_queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/ct-events",
    "intake.sqs_endpoint_url": "http://127.0.0.1:5000",
    "intake.servicebus_connection": "env:D365CT_SERVICEBUS_CONNECTION",
    "intake.servicebus_queue": "commercetools-events",
    "service.token": "env:D365CT_API_TOKEN",
    "catalog.mapping.name_field": "SearchName",
    "catalog.mapping.slug_field": "ItemNumber",
    "catalog.mapping.hook": "d365ct.mapping.examples:describe_with_search_name",
    "inventory.mapping.hook": "d365ct.mapping.examples:hold_back_safety_stock",
    "prices.mapping.hook": "d365ct.mapping.examples:charm_prices",
}
# Keys written active (not commented out) although they have a default: secure by default means
# an example that configures its tokens.
ACTIVE: Final = frozenset({"d365.tenant_id", "d365.client_secret", "intake.token", "service.token"})
_SCOPES: Final = {concern: client_scopes(concern, "acme") for concern in CONCERNS}
# Help beside the source comments (which come first): for keys that have none, or whose comment
# is a group heading. A test checks every key is documented and no entry here is stale.
EXTRA_HELP: Final[dict[str, str]] = {
    "d365.authority": "Microsoft Entra ID authority host.",
    "d365.tenant_id": "Entra ID tenant (directory) id of the D365 environment.",
    "d365.client_id": "Application (client) id registered in D365 "
    "(System administration → Setup → Microsoft Entra applications).",
    "d365.client_secret": "Client secret, for auth = client_secret or oauth2.",
    "d365.certificate_path": "PEM certificate with private key, for auth = certificate.",
    "d365.request_timeout_seconds": "Timeout of one HTTP request to D365.",
    "d365.max_concurrency": "Concurrent HTTP requests to D365.",
    "d365.rate_per_second": "Client-side request rate limit to D365 (unset: none; 429s are "
    "honoured either way).",
    "d365.max_attempts": "Attempts of one request on 5xx or timeouts before giving up.",
    "d365.poll_interval_seconds": "Seconds between DMF job status polls (±jitter; SPEC C6).",
    "d365.poll_max_attempts": "Status polls before a job is marked stuck for operators.",
    "d365.package_max_bytes": "Largest data package uploaded; larger batches are split.",
    "d365.import_concurrency_per_legal_entity": "DMF imports running at once per legal entity, "
    "across all workers (SPEC C4).",
    "store.url": "Database of the job store, error queue and DBOS: sqlite:///PATH or "
    "postgresql://USER@HOST/DB.",
    "commercetools.project_key": "commercetools project key.",
    "commercetools.api_url": "commercetools API URL of the project's region.",
    "commercetools.auth_url": "commercetools auth URL of the project's region.",
    "commercetools.clients": "One API client per concern: catalog, inventory, orders, customers.",
    "commercetools.max_concurrency": "Concurrent HTTP requests to commercetools.",
    "commercetools.clients.*.client_id": "API client id.",
    "commercetools.clients.*.client_secret": "API client secret.",
    "commercetools.clients.*.scopes": "Scopes requested; least privilege, e.g. "
    "manage_products:PROJECT.",
    "legal_entities.currency": "ISO 4217 currency of the legal entity.",
    "warehouses.legal_entity": "The legal entity (dataAreaId) the warehouse belongs to.",
    "inventory.export_project": "DMF data project exporting on-hand for the nightly "
    "reconciliation.",
    "orders.shipping_as": "Post commercetools shipping as a D365 sales order line (item "
    "shipping_item) or as a sales order header charge (charges code shipping_charge_code).",
    "orders.shipping_charge_code": "D365 charges code of shipping posted as a header charge "
    "(Accounts receivable > Charges setup > Charges code).",
    "catalog.publish": "Publish products after each change.",
    "intake.kind": "Where commercetools Subscription messages arrive: http (POST "
    "/intake/commercetools), sqs or servicebus.",
    "intake.sqs_queue_url": "the queue's URL, required when kind = sqs.",
    "intake.sqs_region": "AWS region of the SQS queue.",
    "intake.servicebus_connection": "connection string, required when kind = servicebus.",
    "intake.sqs_wait_seconds": "SQS long-poll wait.",
    "intake.sqs_visibility_timeout": "SQS visibility timeout of a received batch.",
    "intake.servicebus_queue": "Service Bus queue name.",
    "orders.definition_group": "DMF data project (definition group) of sales order imports.",
    "customers.definition_group": "DMF data project (definition group) of customer imports.",
}
_SECTION_HELP: Final = {
    "d365": "Dynamics 365 Finance & Operations: environment, credentials, polling.",
    "store": "The database of d365ct and of its durable engine.",
    "commercetools": "The commercetools project and its API clients.",
    "legal_entities": "D365 legal entities (dataAreaId) and what routes to them (SPEC C13).",
    "warehouses": "D365 warehouses and the commercetools supply channels they feed.",
    "catalog": "Catalog and price sync (U1).",
    "inventory": "Inventory sync and reconciliation (U2).",
    "prices": "Price sync (U1): its schedule in `d365ct run` (prices use the catalog client).",
    "intake": "Event intake from commercetools Subscriptions (U3, U4).",
    "service": "The HTTP service of d365ct run: dashboard, JSON API, webhook intake, metrics.",
    "orders": "Order posting to D365 (U3).",
    "customers": "Customer sync to D365 (U4).",
}


@dataclass(frozen=True)
class FieldDoc:
    path: str  # dotted; "*" for any key of a table
    type: str
    default: str  # as TOML, or "required" / "unset"
    env: str | None
    help: str
    required: bool
    scalar: bool


def _comments() -> dict[tuple[str, str], str]:
    """Comments beside and above each field in d365ct/config.py: its documentation."""
    source = inspect.getsource(config_module)
    lines = source.splitlines()
    comment_at = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    found: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above: list[str] = []
            line = stmt.lineno - 1
            while line >= 1 and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comment_at.get(line, ""))
                line -= 1
            end = stmt.end_lineno or stmt.lineno
            beside = [
                comment_at[n]
                for n in range(stmt.lineno, end + 1)
                if n in comment_at and not lines[n - 1].lstrip().startswith("#")
            ]
            text = " ".join(part for part in [*above, *beside] if part)
            if text:
                found[(node.name, stmt.target.id)] = text
    return found


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """(model, shape) where shape is 'table', 'array' (tuple of models) or 'map' (dict of them)."""
    annotation, _ = _unwrap_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "table"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "array"
    if (
        origin is dict
        and len(args) == 2
        and isinstance(args[1], type)
        and issubclass(args[1], BaseModel)
    ):
        return args[1], "map"
    return None, ""


def _type_text(annotation: Any, info: FieldInfo) -> tuple[str, bool]:
    """Human type and whether an environment variable can carry it (scalars only)."""
    inner, optional = _unwrap_optional(annotation)
    scalar = True
    if inner is SecretRef:
        text = "secret reference (env:NAME or file:PATH)"
    elif get_origin(inner) is Literal:
        text = "one of " + ", ".join(f'"{a}"' for a in get_args(inner))
    elif get_origin(inner) is tuple:
        text, scalar = "list of strings", False
    elif get_origin(inner) is dict:
        text, scalar = "table of strings", False
    elif inner is Path:
        text = "path"
    elif inner is bool:
        text = "boolean"
    elif inner is int:
        text = "integer"
    elif inner is float:
        text = "number"
    elif inner is str:
        text = "string"
    else:
        text = getattr(inner, "__name__", str(inner))
    bounds = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            bounds.append(f"≥ {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            bounds.append(f"> {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            bounds.append(f"≤ {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            bounds.append(f"< {meta.lt}")
    if bounds:
        text += " (" + ", ".join(bounds) + ")"
    if optional:
        text += ", optional"
    return text, scalar


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "a").replace("-", "a").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _default(info: FieldInfo) -> Any:
    return info.get_default(call_default_factory=True)


def _help(comments: dict[tuple[str, str], str], cls: type[BaseModel], path: str, name: str) -> str:
    """The field's description, else its source comment; EXTRA_HELP adds to either."""
    info = cls.model_fields[name]
    own = info.description or comments.get((cls.__name__, name), "")
    extra = EXTRA_HELP.get(path, "")
    if own and extra:
        return f"{own.rstrip('.')}: {extra}"
    return own or extra


def field_docs(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[FieldDoc]:
    """Every settings key, depth first, in declaration order."""
    comments = _comments()

    def walk(cls: type[BaseModel], prefix: str, env: bool) -> Iterator[FieldDoc]:
        for name, info in cls.model_fields.items():
            path = f"{prefix}{name}"
            sub, shape = _model_of(info.annotation)
            if sub is not None:
                if shape == "map":
                    yield FieldDoc(
                        path,
                        "table of tables",
                        "{}",
                        None,
                        _help(comments, cls, path, name),
                        False,
                        False,
                    )
                    yield from walk(sub, f"{path}.*.", env)
                elif shape == "array":
                    yield from walk(sub, f"{path}.", False)
                else:
                    yield from walk(sub, f"{path}.", env)
                continue
            type_text, scalar = _type_text(info.annotation, info)
            if info.is_required():
                default = "required"
            else:
                value = _default(info)
                default = "unset" if value is None else toml_value(value)
            variable = None
            if env and scalar:
                variable = ENV_PREFIX + "__".join(
                    part.upper() if part != "*" else "<CONCERN>" for part in path.split(".")
                )
            yield FieldDoc(
                path,
                type_text,
                default,
                variable,
                _help(comments, cls, path, name),
                info.is_required(),
                scalar,
            )

    yield from walk(model, prefix, True)


# -- example TOML ------------------------------------------------------------------------------


def _example(path: str, concern: str | None) -> Any:
    if path.endswith(".scopes") and concern is not None:
        return _SCOPES[concern]
    key = path if concern is None else path.replace(f".{concern}.", ".*.")
    value = EXAMPLES.get(key)
    if isinstance(value, str) and concern is not None:
        value = value.replace("{CONCERN}", concern.upper())
    return value


def _wrap(text: str, width: int = 96) -> list[str]:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        lines.append(current)
    return lines


def _table_lines(
    cls: type[BaseModel],
    path: str,
    header: str,
    comments: dict[tuple[str, str], str],
    concern: str | None = None,
) -> list[str]:
    out = [f"{header}"]
    nested: list[list[str]] = []
    for name, info in cls.model_fields.items():
        key = f"{path}.{name}"
        sub, shape = _model_of(info.annotation)
        if sub is not None:
            if shape == "map":
                for c in CONCERNS:
                    nested.append(
                        _table_lines(sub, f"{key}.{c}", f"[{key}.{c}]", comments, concern=c)
                    )
            elif shape == "table":  # a sub-section such as [catalog.mapping]
                nested.append(_table_lines(sub, key, f"[{key}]", comments, concern))
            continue
        doc_key = key if concern is None else key.replace(f".{concern}.", ".*.")
        text = _help(comments, cls, doc_key, name)
        type_text, _ = _type_text(info.annotation, info)
        for line in _wrap(text):
            out.append(f"# {line}")
        example = _example(key, concern)
        if info.is_required():
            out.append(f"# {type_text}; required")
            out.append(f"{name} = {toml_value(example)}")
        else:
            default = _default(info)
            shown = default if default is not None else example
            if default is None:
                out.append(f"# {type_text}; unset by default")
            else:
                out.append(f"# {type_text}")
            if shown is None:
                raise KeyError(f"configdoc.EXAMPLES needs an example for {doc_key}")
            active = doc_key in ACTIVE or (concern is not None and name == "scopes")
            prefix = "" if active else "# "
            value = example if active and example is not None else shown
            out.append(f"{prefix}{name} = {toml_value(value)}")
        out.append("")
    for block in nested:
        out.extend(block)
    return out


def example_toml() -> str:
    """A commented d365ct.toml with every key: required ones filled with examples, the rest
    commented out at their defaults (or at an example, when unset by default)."""
    comments = _comments()
    out = [
        "# d365ct configuration: every key, generated from the settings models",
        "# (d365ct config example). Each key can be overridden by an environment variable",
        "# D365CT_<SECTION>__<KEY>, e.g. D365CT_D365__POLL_INTERVAL_SECONDS=10.",
        "# Secrets are references, env:NAME or file:PATH, never the secret itself.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        sub, shape = _model_of(info.annotation)
        assert sub is not None, f"top-level setting {name} is not a section"
        out.extend(f"# {line}" for line in _wrap(_SECTION_HELP.get(name, "")))
        header = f"[[{name}]]" if shape == "array" else f"[{name}]"
        out.extend(_table_lines(sub, name, header, comments))
    text = "\n".join(out).rstrip() + "\n"
    return text


# -- Markdown reference ------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """docs/configuration.md: a table per section, then the full example."""
    docs = list(field_docs())
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `d365ct config example --markdown`; do not edit by hand: "
        "tests/commands/test_service_cli.py fails when it is out of date. -->",
        "",
        "d365ct reads one TOML file (`--config PATH`, or `D365CT_CONFIG`, default "
        "`./d365ct.toml`). Every scalar key can be overridden by an environment variable "
        "`D365CT_<SECTION>__<KEY>` (listed below). Secrets are references — `env:NAME` or "
        "`file:PATH` — resolved when used and never printed, logged or shown on the dashboard.",
        "",
        "Start from the generated example: `d365ct config example > d365ct.toml`, then "
        "`d365ct check --config d365ct.toml`.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        _, shape = _model_of(info.annotation)
        header = f"[[{name}]]" if shape == "array" else f"[{name}]"
        out += [f"## `{header}`", "", _SECTION_HELP.get(name, ""), ""]
        if shape == "array":
            out += ["A list: repeat the table once per entry. Not overridable by environment.", ""]
        out += [
            "| Key | Type | Default | Environment variable | Description |",
            "|---|---|---|---|---|",
        ]
        for doc in docs:
            if doc.path.split(".")[0] != name:
                continue
            key = doc.path[len(name) + 1 :]
            default = (
                f"`{doc.default}`" if doc.default not in ("required", "unset") else doc.default
            )
            env = f"`{doc.env}`" if doc.env else "—"
            out.append(
                f"| `{_cell(key)}` | {_cell(doc.type)} | {_cell(default)} | {env} "
                f"| {_cell(doc.help)} |"
            )
        out.append("")
    out += ["## Full example", "", "```toml", example_toml().rstrip(), "```", ""]
    return "\n".join(out)
