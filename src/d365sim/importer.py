"""Validates and writes the rows of an imported DMF package the way D365's target step does.

Good rows are upserted by key; each bad row becomes a RecordError with D365-style wording.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from d365sim.entities import BY_NAME, EntitySet
from d365sim.packages import PackageEntity, PackageReader, parse_value
from d365sim.store import EntityStore


@dataclass
class RecordError:
    row_number: int  # 1-based data row in the file
    keys: dict[str, str]  # the row's import keys, as written in the file
    message: str
    raw: dict[str, str]


@dataclass
class EntityResult:
    label: str
    entity_set: str
    staged: int = 0
    written: int = 0
    errors: list[RecordError] = field(default_factory=list)


def humanise(name: str) -> str:
    """'CustomerGroupId' → 'Customer group id', close to D365's field labels."""
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|$)|[A-Z]?[a-z0-9]+", name)
    text = " ".join(w.lower() if i else w for i, w in enumerate(words))
    return text[:1].upper() + text[1:]


def not_found(value: object, field_name: str, table: str) -> str:
    return (
        f"The value '{value}' in field '{humanise(field_name)}' is not found in the related "
        f"table '{table}'."
    )


class Importer:
    """Imports the entities of one package into the store for one legal entity."""

    def __init__(self, store: EntityStore, legal_entity: str) -> None:
        self.store = store
        self.legal_entity = legal_entity.lower()
        self._companies = {
            str(row["LegalEntityId"]).lower() for row, _ in store.query(BY_NAME["LegalEntities"])
        }
        # Orders whose header failed in this package: their lines fail too.
        self._failed_orders: set[tuple[str, str]] = set()

    @property
    def company_exists(self) -> bool:
        return self.legal_entity in self._companies

    def run(self, reader: PackageReader) -> Iterator[EntityResult]:
        for package_entity in sorted(reader.entities, key=lambda e: e.sequence):
            yield self.import_entity(reader, package_entity)

    def import_entity(self, reader: PackageReader, package_entity: PackageEntity) -> EntityResult:
        entity = package_entity.entity
        result = EntityResult(package_entity.label, entity.name)
        for number, raw in enumerate(reader.iter_rows(package_entity), start=1):
            result.staged += 1
            row, message = self.prepare(entity, raw)
            if message is None:
                message = self.validate(entity, row)
            if message is not None:
                keys = {k: raw.get(k, "") for k in entity.row_keys if k != "dataAreaId"}
                result.errors.append(RecordError(number, keys, message, dict(raw)))
                if entity.name == "SalesOrderHeadersV2":
                    self._failed_orders.add(
                        (str(row.get("dataAreaId", "")), str(row.get("SalesOrderNumber", "")))
                    )
                continue
            self.write(entity, row)
            result.written += 1
        return result

    def prepare(
        self, entity: EntitySet, raw: Mapping[str, str]
    ) -> tuple[dict[str, object], str | None]:
        """Parse the file's strings into typed values; the first problem is the row's error."""
        row: dict[str, object] = {}
        for name, text in raw.items():
            field_def = entity.field_by_name[name]
            try:
                row[name] = parse_value(field_def, text)
            except ValueError as exc:
                return row, str(exc)
            too_long = field_def.max_length and len(str(row[name] or "")) > field_def.max_length
            if too_long and isinstance(row[name], str):
                return row, (
                    f"The value '{text}' in field '{humanise(name)}' is too long: at most "
                    f"{field_def.max_length} characters."
                )
        if entity.company_scoped:
            company = str(row.get("dataAreaId") or self.legal_entity).lower()
            if company not in self._companies:
                return row, f"Company '{company}' does not exist."
            row["dataAreaId"] = company
        for field_def in entity.fields:
            if field_def.required and field_def.name not in ("InventoryLotId",):
                value = row.get(field_def.name)
                if value is None or value == "":
                    return row, f"Field '{humanise(field_def.name)}' must be filled in."
        return row, None

    def _exists(self, entity_name: str, **by: object) -> Mapping[str, object] | None:
        return self.store.find(BY_NAME[entity_name], by)

    def validate(self, entity: EntitySet, row: dict[str, object]) -> str | None:
        company = row.get("dataAreaId")
        if entity.name == "CustomersV3":
            group = row["CustomerGroupId"]
            if not self._exists("CustomerGroups", dataAreaId=company, CustomerGroupId=group):
                return not_found(group, "CustomerGroupId", "Customer groups")
        elif entity.name == "SalesOrderHeadersV2":
            account = row["OrderingCustomerAccountNumber"]
            if not self._exists("CustomersV3", dataAreaId=company, CustomerAccount=account):
                return not_found(account, "OrderingCustomerAccountNumber", "Customers")
            invoice = row.get("InvoiceCustomerAccountNumber")
            if invoice and not self._exists(
                "CustomersV3", dataAreaId=company, CustomerAccount=invoice
            ):
                return not_found(invoice, "InvoiceCustomerAccountNumber", "Customers")
        elif entity.name == "SalesOrderLines":
            order = row["SalesOrderNumber"]
            if (str(company), str(order)) in self._failed_orders or not self._exists(
                "SalesOrderHeadersV2", dataAreaId=company, SalesOrderNumber=order
            ):
                return not_found(order, "SalesOrderNumber", "Sales orders")
            return self._validate_item(row) or self._validate_quantity(row)
        elif entity.name == "SalesOrderHeaderChargesV2":
            order = row["SalesOrderNumber"]
            if (str(company), str(order)) in self._failed_orders or not self._exists(
                "SalesOrderHeadersV2", dataAreaId=company, SalesOrderNumber=order
            ):
                return not_found(order, "SalesOrderNumber", "Sales orders")
        elif entity.name == "ReleasedProductVariantsV2":
            item = row["ItemNumber"]
            if not self._exists("ReleasedProductsV2", dataAreaId=company, ItemNumber=item):
                return not_found(item, "ItemNumber", "Released products")
        elif entity.name == "ProductTranslations":
            product = row["ProductNumber"]
            if not self._exists("ReleasedProductsV2", ProductNumber=product):
                return not_found(product, "ProductNumber", "Products")
        return None

    def _validate_item(self, row: dict[str, object]) -> str | None:
        company, item = row["dataAreaId"], row["ItemNumber"]
        product = self._exists("ReleasedProductsV2", dataAreaId=company, ItemNumber=item)
        if product is None:
            return not_found(item, "ItemNumber", "Released products")
        if product.get("ProductSubType") == "ProductMaster":
            dims = {
                name: row.get(name) or ""
                for name in (
                    "ProductColorId",
                    "ProductConfigurationId",
                    "ProductSizeId",
                    "ProductStyleId",
                )
            }
            if not self._exists(
                "ReleasedProductVariantsV2", dataAreaId=company, ItemNumber=item, **dims
            ):
                shown = ", ".join(f"{humanise(k)} '{v}'" for k, v in dims.items() if v)
                return (
                    f"Item '{item}' is a product master; the product variant ({shown or 'none'}) "
                    "does not exist."
                )
        return None

    @staticmethod
    def _validate_quantity(row: dict[str, object]) -> str | None:
        quantity = row.get("OrderedSalesQuantity")
        if isinstance(quantity, Decimal) and quantity <= 0:
            return f"Quantity '{quantity}' must be greater than zero."
        return None

    def write(self, entity: EntitySet, row: dict[str, object]) -> None:
        defaults = _DEFAULTS.get(entity.name)
        if defaults is not None:
            defaults(row)
        if entity.name == "SalesOrderLines":
            existing = self.store.find(entity, {k: row[k] for k in entity.row_keys})
            if existing is not None:
                row["InventoryLotId"] = existing["InventoryLotId"]
            elif not row.get("InventoryLotId"):
                row["InventoryLotId"] = uuid.uuid4().hex[:12].upper()
        self.store.upsert(entity, row, entity.row_keys)


def _customer_defaults(row: dict[str, object]) -> None:
    if not row.get("PartyType"):
        row["PartyType"] = "Organization" if row.get("OrganizationName") else "Person"
    if not row.get("PartyNumber"):
        row["PartyNumber"] = f"P-{row['CustomerAccount']}"
    if not row.get("OnHoldStatus"):
        row["OnHoldStatus"] = "No"


def _order_defaults(row: dict[str, object]) -> None:
    if not row.get("InvoiceCustomerAccountNumber"):
        row["InvoiceCustomerAccountNumber"] = row["OrderingCustomerAccountNumber"]
    if not row.get("SalesOrderStatus"):
        row["SalesOrderStatus"] = "Backorder"


def _charge_defaults(row: dict[str, object]) -> None:
    if not row.get("ChargeCategory"):
        row["ChargeCategory"] = "Fixed"


def _line_defaults(row: dict[str, object]) -> None:
    if not row.get("SalesOrderLineStatus"):
        row["SalesOrderLineStatus"] = "Backorder"
    price, quantity = row.get("SalesPrice"), row.get("OrderedSalesQuantity")
    if (
        row.get("LineAmount") is None
        and isinstance(price, Decimal)
        and isinstance(quantity, Decimal)
    ):
        discount = row.get("LineDiscountAmount")
        row["LineAmount"] = price * quantity - (discount if isinstance(discount, Decimal) else 0)


_DEFAULTS = {
    "CustomersV3": _customer_defaults,
    "SalesOrderHeadersV2": _order_defaults,
    "SalesOrderLines": _line_defaults,
    "SalesOrderHeaderChargesV2": _charge_defaults,
}
