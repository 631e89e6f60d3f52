"""D365 sales price agreements → commercetools StandalonePrice drafts (SPEC M4), per legal entity.

Pure: `now` is passed in. Money is Decimal → integer minor units (ISO 4217), rounded half-even.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from d365ct.commercetools.actions import fraction_digits, money
from d365ct.mapping.catalog import DIMENSION_ATTRIBUTES, Variant
from d365ct.mapping.skus import variant_sku

__all__ = [
    "PRICE_FIELDS",
    "PRICE_VARIANT_FIELDS",
    "PriceHook",
    "PriceMapping",
    "PriceOptions",
    "PricePlan",
    "RejectedRow",
    "customer_group_key",
    "price_plans",
    "to_decimal",
    "unit_price",
]

_DIMENSIONS = tuple(field for field, _ in DIMENSION_ATTRIBUTES)  # colour, size, style, config
PRICE_FIELDS = (
    "RecordId",
    "ItemNumber",
    *_DIMENSIONS,
    "Price",
    "PriceCurrencyCode",
    "SalesPriceQuantity",
    "PriceApplicableFromDate",
    "PriceApplicableToDate",
    "PriceCustomerGroupCode",
    "CustomerAccountNumber",
    "PriceWarehouseId",
    "PriceSiteId",
)
PRICE_VARIANT_FIELDS = ("ItemNumber", *_DIMENSIONS)
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_ONE_MS = timedelta(milliseconds=1)

# (a copy of the default StandalonePriceDraft, a copy of its D365 SalesPriceAgreements row) →
# the draft to use; see d365ct.hooks
PriceHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class PriceOptions:
    legal_entity: str  # dataAreaId: the prices of one company
    country: str | None = None  # the legal entity's first configured country, if any
    group_prefix: str = "d365-"  # commercetools CustomerGroup key = prefix + D365 group code
    hook: PriceHook | None = None  # [prices.mapping] hook, loaded (d365ct.hooks.load_hook)
    hook_name: str = ""  # how error texts name the hook: its package.module:function

    def __post_init__(self) -> None:
        if self.country is not None and not _COUNTRY.match(self.country):
            raise ValueError(f"country must be an ISO 3166 alpha-2 code, not {self.country!r}")


def customer_group_key(code: str, prefix: str = "d365-") -> str:
    """The commercetools CustomerGroup key of a D365 customer group: '20' → 'd365-20'."""
    return f"{prefix}{code.strip()}"


@dataclass(frozen=True)
class PricePlan:
    """One desired StandalonePrice.

    `state_key` names it in sync_state: the price key plus a digest of its scope (sku, currency,
    country, customer group, validity). Scope fields cannot be changed in place, so a new scope
    is a new state key: the old price is deleted and a new one created; a new value alone is an
    update of the same one.
    """

    state_key: str
    key: str
    sku: str
    record_id: int
    draft: dict[str, Any]
    content_hash: str
    group: str | None = None  # commercetools CustomerGroup key, if scoped to one

    @property
    def scope(self) -> tuple[str | None, ...]:
        return _scope(self.draft)


@dataclass(frozen=True)
class RejectedRow:
    """A price agreement row that produced no price; `error` True: bad data for the error queue,
    False: out of scope for commercetools (skipped and counted)."""

    record: str
    reason: str
    error: bool
    row: Mapping[str, Any] = field(default_factory=dict)
    # invalid | hook (the mapping hook failed; `record` is the price key) | customer-specific |
    # site-specific | expired | superseded
    kind: str = "invalid"


@dataclass(frozen=True)
class PriceMapping:
    plans: list[PricePlan]
    rejected: list[RejectedRow]

    @property
    def errors(self) -> list[RejectedRow]:
        return [r for r in self.rejected if r.error]

    @property
    def skipped(self) -> list[RejectedRow]:
        return [r for r in self.rejected if not r.error]


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def to_decimal(value: object) -> Decimal:
    """An OData amount as Decimal. Text and Decimal are exact; a float (a JSON parser without
    parse_float=Decimal) goes through its shortest repr, which is the JSON text for ≤ 15 digits."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not an amount: {value!r}")
    if isinstance(value, Decimal | int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {value!r}") from exc


def unit_price(price: object, quantity: object, currency: str) -> dict[str, Any]:
    """Money of one unit: Price / SalesPriceQuantity, in the currency's minor units.

    Rounded half-even (banker's rounding, ISO 4217 digits: JPY 0, EUR 2, KWD 3), so a price per
    100 units or a price finer than the currency allows lands on the nearest minor unit without
    a bias upwards across many prices.
    """
    amount = to_decimal(price)
    per = to_decimal(quantity) if quantity not in (None, "") else Decimal(1)
    if per <= 0:
        per = Decimal(1)  # D365 treats a zero price quantity as 1
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"price {price!r} is not a non-negative amount")
    return money(amount / per, currency, rounding=ROUND_HALF_EVEN)


def _day(value: object) -> date | None:
    """A D365 date-only field; 1900-01-01 (D365's empty date) and blanks are None."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.year <= 1900:
        return None
    # date-only fields travel as noon UTC, so the UTC date is the D365 date
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _scope(draft: Mapping[str, Any]) -> tuple[str | None, ...]:
    group = draft.get("customerGroup")
    scope: tuple[str | None, ...] = (
        draft["sku"],
        draft["value"]["currencyCode"],
        draft.get("country"),
        group.get("key") if group else None,
        draft.get("validFrom"),
        draft.get("validUntil"),
    )
    channel = draft.get("channel")
    if channel:  # only a hook sets one; appended, so the scopes of other prices keep their digest
        scope += (str(channel.get("key") or channel.get("id")),)
    return scope


def _digest(data: object, length: int = 64) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def _key_part(sku: str) -> str:
    # commercetools keys allow [A-Za-z0-9_-]; other SKUs are named by a digest of themselves
    return sku if _KEY_SAFE.match(sku) and len(sku) <= 200 else "h" + _digest(sku, 16)


@dataclass(frozen=True)
class _Candidate:
    plan: PricePlan
    specificity: int  # dimensions the row names: a variant price beats the master's price
    start: datetime | None  # the price's validity as drafted (None: open)
    end: datetime | None
    # The row's own start date (None: 1900-01-01, "always"). It differs from `start` for an
    # open-ended row that has already started: its draft drops validFrom, yet its priority
    # must still follow the date D365 holds.
    since: datetime | None = None

    @property
    def rank(self) -> tuple[int, datetime, int, str]:
        """Priority when two rows claim one scope, highest first (D365's price search):
        the most specific row, then the latest start date, then the newest record (RecordId),
        then the key, so the outcome never depends on the order rows were read in."""
        since = self.since or datetime.min.replace(tzinfo=UTC)
        return (self.specificity, since, self.plan.record_id, self.plan.key)


def price_plans(
    rows: Iterable[Mapping[str, Any]],
    variants: Mapping[str, Sequence[Variant]],
    options: PriceOptions,
    *,
    now: datetime,
) -> PriceMapping:
    """StandalonePrice plans for the SalesPriceAgreements rows of one legal entity.

    `variants`: released variants per ItemNumber; an item without any is a plain product (sku =
    ItemNumber). A row naming no or some dimensions applies to every variant it matches, unless a
    more specific row names the variant itself (D365 searches the most specific price first).

    Validity: D365 from/to dates are whole days in UTC; 1900-01-01 means "none". An open-ended row
    that has already started becomes a price without validity (the current list price), because
    commercetools refuses overlapping validity periods in one scope but lets a dated price (a sale)
    override an undated one. Rows already expired are skipped. Customer-specific, site- and
    warehouse-specific rows have no StandalonePrice scope and are skipped.

    Priority, when rows claim one scope (same validity, or overlapping dated validity): the row
    naming more dimensions wins, then the one with the latest start date as D365 holds it (an
    open-ended row that started in 2024 beats one that started in 2020, although neither keeps
    a validFrom), then the higher RecordId, then the key. The losers are skipped as superseded.
    """
    le = options.legal_entity.lower()
    rejected: list[RejectedRow] = []
    candidates: list[_Candidate] = []
    for row in rows:
        record_id = _text(row.get("RecordId"))
        record = f"{le}-{record_id}"
        try:
            made, skip = _row_candidates(row, record, variants, options, now)
        except (ValueError, TypeError, KeyError) as exc:
            rejected.append(RejectedRow(record, f"{record}: {exc}", True, dict(row)))
            continue
        if skip is not None:
            kind, reason = skip
            rejected.append(RejectedRow(record, reason, False, dict(row), kind))
        if options.hook is not None:
            made, failed = _hooked(made, row, options, now)
            rejected.extend(failed)
        candidates.extend(made)

    plans: list[PricePlan] = []
    by_base: dict[tuple[str | None, ...], list[_Candidate]] = {}
    for candidate in candidates:
        by_base.setdefault(candidate.plan.scope[:4], []).append(candidate)
    for group in by_base.values():
        kept: list[_Candidate] = []
        for candidate in sorted(group, key=lambda c: c.rank, reverse=True):
            clash = next((k for k in kept if _collides(k, candidate)), None)
            if clash is None:
                kept.append(candidate)
                continue
            same = clash.start == candidate.start and clash.end == candidate.end
            why = "the same scope" if same else "an overlapping validity period in its scope"
            rejected.append(
                RejectedRow(
                    candidate.plan.key,
                    f"sku {candidate.plan.sku}: superseded by agreement {clash.plan.key} "
                    f"({'more specific or newer' if same else 'higher priority'}) with {why}",
                    False,
                    kind="superseded",
                )
            )
        plans.extend(c.plan for c in kept)
    plans.sort(key=lambda p: p.state_key)
    return PriceMapping(plans, rejected)


def _hooked(
    made: Sequence[_Candidate], row: Mapping[str, Any], options: PriceOptions, now: datetime
) -> tuple[list[_Candidate], list[RejectedRow]]:
    """The candidates after the price hook. Applied before the priority resolution, so a
    validity the hook sets competes like one D365 holds; each price's failure is its own."""
    assert options.hook is not None
    kept: list[_Candidate] = []
    failed: list[RejectedRow] = []
    for candidate in made:
        plan = candidate.plan
        problem: str | None
        try:
            changed = options.hook(copy.deepcopy(plan.draft), copy.deepcopy(dict(row)))
        except Exception as exc:  # user code failing fails this price, not the run
            problem = f"{type(exc).__name__}: {exc}"
        else:
            problem = _draft_problem(changed, plan.draft)
        if problem is not None:
            reason = f"mapping hook {options.hook_name} failed for price {plan.key}: {problem}"
            failed.append(RejectedRow(plan.key, reason, True, dict(row), "hook"))
            continue
        start = _instant(changed.get("validFrom"))
        end = _instant(changed.get("validUntil"))
        if end is not None and end < now:
            reason = f"expired on {changed['validUntil']} (validity set by the mapping hook)"
            failed.append(RejectedRow(plan.key, reason, False, dict(row), "expired"))
            continue
        group = changed.get("customerGroup")
        state_key = f"{plan.key}@{_digest(_scope(changed), 12)}"
        hooked = PricePlan(
            state_key,
            plan.key,
            plan.sku,
            plan.record_id,
            changed,
            _digest(changed),
            str(group["key"]) if group else None,
        )
        kept.append(_Candidate(hooked, candidate.specificity, start, end, candidate.since))
    return kept, failed


def _instant(value: object) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _draft_problem(changed: object, default: Mapping[str, Any]) -> str | None:
    """Why a hook's draft cannot be sent, or None. Checked here, so a bad draft fails its own
    price at mapping time rather than as a refused write."""
    if not isinstance(changed, dict):
        return f"returned {type(changed).__name__}, not a standalone price draft (dict)"
    for name in ("key", "sku"):
        if changed.get(name) != default[name]:
            return f"changed {name}, which d365ct manages"
    value = changed.get("value")
    if not isinstance(value, dict) or not isinstance(value.get("currencyCode"), str):
        return f"value must be a Money draft with a currencyCode, not {value!r}"
    cents = value.get("centAmount")
    if isinstance(cents, bool) or not isinstance(cents, int) or cents < 0:
        return f"value.centAmount must be a non-negative int, not {cents!r}"
    try:
        digits = fraction_digits(value["currencyCode"])
    except ValueError as exc:
        return f"value: {exc}"
    if value.get("fractionDigits", digits) != digits or value.get("type", "centPrecision") != (
        "centPrecision"
    ):
        return f"value must be centPrecision with {digits} fraction digits"
    try:
        start, end = _instant(changed.get("validFrom")), _instant(changed.get("validUntil"))
    except ValueError as exc:
        return f"validFrom/validUntil must be ISO 8601 instants: {exc}"
    if start is not None and end is not None and end < start:
        return f"validFrom {changed['validFrom']} is after validUntil {changed['validUntil']}"
    country = changed.get("country")
    if country is not None and not (isinstance(country, str) and _COUNTRY.match(country)):
        return f"country must be an ISO 3166 alpha-2 code, not {country!r}"
    for name, type_id in (("customerGroup", "customer-group"), ("channel", "channel")):
        reference = changed.get(name)
        if reference is None:
            continue
        keyed = isinstance(reference, dict) and isinstance(reference.get("key"), str)
        if not keyed or reference.get("typeId", type_id) != type_id:
            return f"{name} must be {{'typeId': '{type_id}', 'key': ...}}, not {reference!r}"
    return None


def _collides(a: _Candidate, b: _Candidate) -> bool:
    if (a.start, a.end) == (b.start, b.end):
        return True
    if (a.start is None and a.end is None) or (b.start is None and b.end is None):
        return False  # an undated price never conflicts with a dated one
    far = datetime.max.replace(tzinfo=UTC)
    near = datetime.min.replace(tzinfo=UTC)
    return (a.start or near) <= (b.end or far) and (b.start or near) <= (a.end or far)


def _row_candidates(
    row: Mapping[str, Any],
    record: str,
    variants: Mapping[str, Sequence[Variant]],
    options: PriceOptions,
    now: datetime,
) -> tuple[list[_Candidate], tuple[str, str] | None]:
    if _text(row.get("CustomerAccountNumber")):
        return [], (
            "customer-specific",
            "customer-specific price: commercetools scopes standalone prices by customer group, "
            "not by customer",
        )
    if _text(row.get("PriceWarehouseId")) or _text(row.get("PriceSiteId")):
        return [], ("site-specific", "site or warehouse price: no price channel maps D365 sites")
    item = _text(row.get("ItemNumber"))
    if not item:
        raise ValueError("price agreement without ItemNumber")
    record_id = int(_text(row.get("RecordId")) or "0")
    currency = _text(row.get("PriceCurrencyCode")).upper()
    fraction_digits(currency)  # raises on a code that is not ISO 4217-shaped
    value = unit_price(row.get("Price"), row.get("SalesPriceQuantity"), currency)

    first, last = _day(row.get("PriceApplicableFromDate")), _day(row.get("PriceApplicableToDate"))
    start = _start(first) if first else None
    end = _start(last) + timedelta(days=1) - _ONE_MS if last else None  # the whole last day
    if start and end and end < start:
        raise ValueError(f"valid from {first} is after valid to {last}")
    if end is not None and end < now:
        return [], ("expired", f"expired on {last}")
    since = start
    if end is None and start is not None and start <= now:
        start = None  # the current open-ended price: no validity (see price_plans)

    dims = tuple(_text(row.get(name)) for name in _DIMENSIONS)
    known = variants.get(item)
    if known:
        skus = [
            v.sku
            for v in known
            if all(d == "" or d == vd for d, vd in zip(dims, v.dimensions, strict=True))
        ]
        if not skus:
            named = ", ".join(f"{n}={d}" for n, d in zip(_DIMENSIONS, dims, strict=True) if d)
            raise ValueError(f"item {item} has no released variant with {named}")
    elif any(dims):
        named = ", ".join(f"{n}={d}" for n, d in zip(_DIMENSIONS, dims, strict=True) if d)
        raise ValueError(f"item {item} has no released variants, but the price names {named}")
    else:
        skus = [variant_sku(item)]

    own_sku = variant_sku(item, *dims)
    group_code = _text(row.get("PriceCustomerGroupCode"))
    group = customer_group_key(group_code, options.group_prefix) if group_code else None
    made = []
    for sku in sorted(set(skus)):
        key = record if sku == own_sku else f"{record}-{_key_part(sku)}"
        draft: dict[str, Any] = {"key": key, "sku": sku, "value": value}
        if options.country:
            draft["country"] = options.country
        if group:
            draft["customerGroup"] = {"typeId": "customer-group", "key": group}
        if start:
            draft["validFrom"] = _iso(start)
        if end:
            draft["validUntil"] = _iso(end)
        draft["active"] = True  # the API defaults to true, the mock to false: say it
        state_key = f"{key}@{_digest(_scope(draft), 12)}"
        plan = PricePlan(state_key, key, sku, record_id, draft, _digest(draft), group)
        made.append(_Candidate(plan, sum(1 for d in dims if d), start, end, since))
    return made, None
