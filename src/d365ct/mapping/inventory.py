"""D365 on-hand rows (WarehousesOnHandV2, OData or DMF export) → commercetools stock (M5, M6).

Pure: rows and the warehouse → channel map in; (sku, channel, integer quantity) or an error out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from d365ct.config import WarehouseSettings
from d365ct.errors import ConfigurationError
from d365ct.mapping.skus import DIMENSION_FIELDS, variant_sku

__all__ = [
    "DEFAULT_QUANTITY_FIELD",
    "InventoryHook",
    "OnHandError",
    "StockRow",
    "StockTotal",
    "StockTotals",
    "WarehouseMap",
    "aggregate",
    "apply_inventory_hook",
    "inventory_draft",
    "inventory_key",
    "map_on_hand",
    "on_hand_fields",
    "parse_quantity",
    "state_key",
    "stock_quantity",
]

DEFAULT_QUANTITY_FIELD = "AvailableOnHandQuantity"
ITEM_FIELD = "ItemNumber"
SITE_FIELD = "InventorySiteId"
WAREHOUSE_FIELD = "InventoryWarehouseId"

_KEY = re.compile(r"^[A-Za-z0-9_-]{2,256}$")  # commercetools' pattern for resource keys

# (the default InventoryEntryDraft, its D365 source) → the draft to use; see d365ct.hooks
InventoryHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]


def on_hand_fields(quantity_field: str = DEFAULT_QUANTITY_FIELD) -> tuple[str, ...]:
    """The fields a sync needs from an on-hand row: the OData $select."""
    return (ITEM_FIELD, *DIMENSION_FIELDS, SITE_FIELD, WAREHOUSE_FIELD, quantity_field)


# ---- quantities --------------------------------------------------------------------------------


def parse_quantity(value: object) -> Decimal:
    """A D365 quantity as an exact Decimal: OData gives JSON numbers, DMF packages text."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text that reads back as this float
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a quantity: {value!r}") from None
    else:
        raise ValueError(f"not a quantity: {value!r}")
    if not number.is_finite():
        raise ValueError(f"not a quantity: {value!r}")
    return number


def stock_quantity(on_hand: Decimal) -> int:
    """commercetools' integer quantityOnStock for a D365 decimal quantity.

    Floor, never round: 2.6 units on hand can fill two orders, not three. Negative becomes 0:
    D365 shows negative availability when reservations exceed what is on hand (or negative
    physical inventory is allowed); for a storefront that means nothing to sell, and a negative
    stock would make commercetools hold later receipts against it.
    """
    if on_hand <= 0:
        return 0
    return int(on_hand.to_integral_value(rounding=ROUND_FLOOR))


# ---- warehouses → supply channels --------------------------------------------------------------


def _fold(warehouse: str) -> str:
    # D365 compares ids case-insensitively, so "de-01" in the configuration matches "DE-01".
    return warehouse.strip().casefold()


class WarehouseMap:
    """The configured warehouse → supply channel map (SPEC M6, C13), per legal entity.

    Several warehouses of one legal entity may feed one channel (their quantities are summed).
    A channel fed by two legal entities is refused: each entity's sync would overwrite the
    other's quantities.
    """

    def __init__(self, warehouses: Iterable[WarehouseSettings]) -> None:
        self._channel: dict[tuple[str, str], str] = {}
        self._warehouses: dict[str, list[str]] = {}
        self._entity_of: dict[str, str] = {}
        for entry in warehouses:
            legal_entity = entry.legal_entity.lower()
            key = (legal_entity, _fold(entry.warehouse))
            known = self._channel.get(key)
            if known is not None and known != entry.supply_channel:
                raise ConfigurationError(
                    f"warehouses: warehouse '{entry.warehouse}' of legal entity "
                    f"'{legal_entity}' is mapped to both '{known}' and '{entry.supply_channel}'"
                )
            owner = self._entity_of.setdefault(entry.supply_channel, legal_entity)
            if owner != legal_entity:
                raise ConfigurationError(
                    f"warehouses: supply channel '{entry.supply_channel}' is fed by legal "
                    f"entities '{owner}' and '{legal_entity}'; give each its own channel"
                )
            if known is None:
                self._channel[key] = entry.supply_channel
                self._warehouses.setdefault(entry.supply_channel, []).append(entry.warehouse)

    def channel(self, legal_entity: str, warehouse: str) -> str | None:
        return self._channel.get((legal_entity.lower(), _fold(warehouse)))

    def channels(self, legal_entity: str) -> tuple[str, ...]:
        """The supply channels fed by one legal entity, sorted."""
        wanted = legal_entity.lower()
        return tuple(sorted(c for c, le in self._entity_of.items() if le == wanted))

    def warehouses(self, channel: str) -> tuple[str, ...]:
        """The warehouses feeding a channel, as configured."""
        return tuple(self._warehouses.get(channel, ()))

    def warehouse_label(self, channel: str) -> str:
        """How reports name a channel's warehouse(s): "11", or "11+12" when several feed it."""
        return "+".join(self.warehouses(channel)) or channel

    def legal_entity(self, channel: str) -> str | None:
        return self._entity_of.get(channel)


# ---- rows → stock ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StockRow:
    """One mapped on-hand row. Small on purpose: a sync holds one per row of a legal entity."""

    legal_entity: str
    sku: str
    channel: str
    warehouse: str
    site: str
    item: str
    dimensions: tuple[str, ...]  # in DIMENSION_FIELDS order
    on_hand: Decimal  # the D365 quantity, exact

    @property
    def quantity(self) -> int:
        return stock_quantity(self.on_hand)

    @property
    def business_key(self) -> str:
        return f"{self.sku}@{self.legal_entity}/{self.warehouse}"

    def as_row(self, quantity_field: str = DEFAULT_QUANTITY_FIELD) -> dict[str, str]:
        """The D365 row again, as error queue payload (text values, D365 field names)."""
        return {
            "dataAreaId": self.legal_entity,
            ITEM_FIELD: self.item,
            **dict(zip(DIMENSION_FIELDS, self.dimensions, strict=True)),
            SITE_FIELD: self.site,
            WAREHOUSE_FIELD: self.warehouse,
            quantity_field: str(self.on_hand),
        }


@dataclass(frozen=True, slots=True)
class OnHandError:
    """A row that cannot be mapped; it goes to the error queue with this reason."""

    legal_entity: str
    warehouse: str
    sku: str  # "" when the row has no usable ItemNumber
    reason: str
    row: Mapping[str, Any]

    @property
    def business_key(self) -> str:
        return f"{self.sku or '?'}@{self.legal_entity}/{self.warehouse}"


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def map_on_hand(
    row: Mapping[str, Any],
    warehouses: WarehouseMap,
    *,
    legal_entity: str,
    quantity_field: str = DEFAULT_QUANTITY_FIELD,
) -> StockRow | OnHandError:
    """Map one on-hand row of `legal_entity`; problems come back as an OnHandError."""
    legal_entity = legal_entity.lower()
    warehouse = _text(row.get(WAREHOUSE_FIELD))
    item = _text(row.get(ITEM_FIELD))
    dimensions = tuple(_text(row.get(name)) for name in DIMENSION_FIELDS)
    sku = variant_sku(item, *dimensions) if item else ""

    def error(reason: str) -> OnHandError:
        return OnHandError(legal_entity, warehouse, sku, reason, dict(row))

    if not item:
        return error(
            f"on-hand row of warehouse '{warehouse}' in '{legal_entity}' has no ItemNumber"
        )
    if not warehouse:
        return error(f"on-hand row of {sku} in '{legal_entity}' has no {WAREHOUSE_FIELD}")
    if quantity_field not in row:
        return error(
            f"on-hand row of {sku} has no field {quantity_field} (inventory.quantity_field)"
        )
    try:
        on_hand = parse_quantity(row[quantity_field])
    except ValueError as exc:
        return error(f"{quantity_field} of {sku} in warehouse '{warehouse}': {exc}")
    channel = warehouses.channel(legal_entity, warehouse)
    if channel is None:
        return error(
            f"warehouse '{warehouse}' of legal entity '{legal_entity}' is not mapped to a "
            f'supply channel: add a [[warehouses]] entry with legal_entity = "{legal_entity}" '
            f'and warehouse = "{warehouse}"'
        )
    site = _text(row.get(SITE_FIELD))
    return StockRow(legal_entity, sku, channel, warehouse, site, item, dimensions, on_hand)


@dataclass(slots=True)
class StockTotal:
    """What one InventoryEntry (sku × supply channel) should hold: its rows summed."""

    sku: str
    channel: str
    on_hand: Decimal
    rows: list[StockRow] = field(default_factory=list)
    matched: bool = False  # set by a reconciliation once a commercetools entry was found
    draft: dict[str, Any] | None = None  # the entry as the inventory hook made it, if any

    @property
    def quantity(self) -> int:
        if self.draft is not None:
            return int(self.draft["quantityOnStock"])  # the hook's word (checked on the way in)
        # Summed exactly first, then floored: 0.5 + 0.5 at two sites is one unit, and a negative
        # row (over-reserved) lowers the channel's total rather than being ignored.
        return stock_quantity(self.on_hand)

    @property
    def key(self) -> tuple[str, str]:
        return (self.sku, self.channel)

    @property
    def warehouse(self) -> str:
        return "+".join(dict.fromkeys(row.warehouse for row in self.rows))

    @property
    def business_key(self) -> str:
        legal_entity = self.rows[0].legal_entity if self.rows else "?"
        return f"{self.sku}@{legal_entity}/{self.warehouse}"

    def payload(self, quantity_field: str = DEFAULT_QUANTITY_FIELD) -> dict[str, Any]:
        """The D365 row (or rows, when several were summed) behind this total."""
        if len(self.rows) == 1:
            return self.rows[0].as_row(quantity_field)
        return {
            "rows": [row.as_row(quantity_field) for row in self.rows],
            quantity_field: str(self.on_hand),
        }


class StockTotals:
    """Mapped rows summed per (sku, channel): the one thing a run holds in memory for a legal
    entity. `keep_rows` keeps each total's rows too, for error payloads; without it memory
    grows with the distinct (sku, channel) pairs only, not with the rows."""

    def __init__(self, *, keep_rows: bool = True) -> None:
        self._totals: dict[tuple[str, str], StockTotal] = {}
        self._keep_rows = keep_rows

    def add(self, row: StockRow) -> StockTotal:
        total = self._totals.get((row.sku, row.channel))
        if total is None:
            total = self._totals[(row.sku, row.channel)] = StockTotal(
                row.sku, row.channel, Decimal(0)
            )
        total.on_hand += row.on_hand
        if self._keep_rows:
            total.rows.append(row)
        return total

    def get(self, sku: str, channel: str) -> StockTotal | None:
        return self._totals.get((sku, channel))

    def discard(self, sku: str, channel: str) -> None:
        self._totals.pop((sku, channel), None)

    def __contains__(self, key: object) -> bool:
        return key in self._totals

    def __len__(self) -> int:
        return len(self._totals)

    def __iter__(self) -> Iterator[StockTotal]:
        return iter(self._totals.values())

    def unmatched(self) -> Iterator[StockTotal]:
        return (total for total in self._totals.values() if not total.matched)


def aggregate(rows: Iterable[StockRow]) -> StockTotals:
    totals = StockTotals()
    for row in rows:
        totals.add(row)
    return totals


# ---- commercetools shapes ----------------------------------------------------------------------


def state_key(sku: str, channel: str) -> str:
    """The sync_state key of an entry: what the last sync wrote for this sku and channel."""
    return f"{sku}@{channel}"


def inventory_key(sku: str, channel: str) -> str:
    """A deterministic InventoryEntry key (the real API strongly recommends one).

    "<channel>__<sku>" when that is a valid key ([A-Za-z0-9_-], 2-256 characters) and
    unambiguous; otherwise "inv-" and a hash of both, so any SKU text still gets a stable key.
    """
    readable = f"{channel}__{sku}"
    if _KEY.match(readable) and "__" not in channel:
        return readable
    digest = hashlib.sha256(f"{channel}\x00{sku}".encode()).hexdigest()[:40]
    return f"inv-{digest}"


def inventory_draft(sku: str, channel: str, channel_id: str, quantity: int) -> dict[str, Any]:
    """An InventoryEntryDraft for `quantity` units of `sku` in the channel (by id)."""
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise ValueError(f"quantityOnStock must be a non-negative int, not {quantity!r}")
    return {
        "key": inventory_key(sku, channel),
        "sku": sku,
        "supplyChannel": {"typeId": "channel", "id": channel_id},
        "quantityOnStock": quantity,
    }


def apply_inventory_hook(
    totals: StockTotals,
    channel_ids: Mapping[str, str],
    hook: InventoryHook,
    *,
    hook_name: str,
    legal_entity: str,
    quantity_field: str = DEFAULT_QUANTITY_FIELD,
) -> list[tuple[StockTotal, str]]:
    """Run the inventory hook on every total's default draft; keep the draft it returns.

    The hook gets a copy of the default InventoryEntryDraft and the source: legal entity, sku,
    supply channel key, warehouse(s), the exact D365 total and the rows behind it. It may change
    quantityOnStock (a non-negative int: what is compared and written) and add fields a create
    sends (restockableInDays, expectedDelivery, custom); sku, supplyChannel and key stay d365ct's.
    A hook that raises or returns something else fails that total: it is taken out of `totals`
    and returned with the reason, so the caller can queue it and leave its entry alone.
    """
    failed: list[tuple[StockTotal, str]] = []
    for total in list(totals):
        channel_id = channel_ids.get(total.channel)
        if channel_id is None:
            continue  # the channel is unusable; the caller fails these rows already
        default = inventory_draft(
            total.sku, total.channel, channel_id, stock_quantity(total.on_hand)
        )
        source = {
            "legal_entity": legal_entity,
            "sku": total.sku,
            "supply_channel": total.channel,
            "warehouse": total.warehouse,
            "on_hand": total.on_hand,
            "rows": [row.as_row(quantity_field) for row in total.rows],
        }
        reason = None
        try:
            changed = hook(json.loads(json.dumps(default)), source)
        except Exception as exc:  # user code failing fails this entry, not the run
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = _draft_problem(changed, default)
        if reason is not None:
            totals.discard(total.sku, total.channel)
            failed.append(
                (
                    total,
                    f"mapping hook {hook_name} failed for {total.sku}@{total.channel}: {reason}",
                )
            )
            continue
        total.draft = changed
    return failed


def _draft_problem(changed: object, default: Mapping[str, Any]) -> str | None:
    if not isinstance(changed, dict):
        return f"returned {type(changed).__name__}, not an inventory entry draft (dict)"
    for name in ("sku", "supplyChannel", "key"):
        if changed.get(name) != default[name]:
            return f"changed {name}, which d365ct manages"
    quantity = changed.get("quantityOnStock")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        return f"quantityOnStock must be a non-negative int, not {quantity!r}"
    return None
