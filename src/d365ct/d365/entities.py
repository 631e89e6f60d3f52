"""The D365 data entities d365ct writes to or reads from DMF packages, as plain data.

Field names follow `reference/d365-fo-apis.md` §5.7; each definition holds only what the flows use.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EntityDefinition:
    """One data entity: its DMF label, OData entity set, the fields d365ct uses, and its keys.

    `fields` are CamelCase entity field names in file column order; packages carry them in
    uppercase. `keys` identify a row in a package (the import key), a subset of `fields`.
    """

    label: str
    odata_name: str
    fields: tuple[str, ...]
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError(f"entity '{self.label}' has no fields")
        # Packages name columns in uppercase, so two fields differing only in case would collide.
        seen: set[str] = set()
        for name in self.fields:
            if name.casefold() in seen:
                raise ValueError(f"entity '{self.label}' lists field {name!r} twice")
            seen.add(name.casefold())
        missing = [key for key in self.keys if key not in self.fields]
        if missing:
            raise ValueError(
                f"entity '{self.label}': key fields {missing} are not among its fields"
            )

    @property
    def columns(self) -> tuple[str, ...]:
        """The fields as D365 names them in data files and entity maps (uppercase)."""
        return tuple(name.upper() for name in self.fields)


_DIMENSIONS = ("ProductColorId", "ProductConfigurationId", "ProductSizeId", "ProductStyleId")
_ADDRESS = ("Street", "City", "ZipCode", "State", "CountryRegionISOCode")

CUSTOMERS_V3 = EntityDefinition(
    label="Customers V3",
    odata_name="CustomersV3",
    fields=(
        "dataAreaId",
        "CustomerAccount",
        "PartyType",
        "OrganizationName",
        "PersonFirstName",
        "PersonLastName",
        "CustomerGroupId",
        "SalesCurrencyCode",
        "LanguageId",
        "PrimaryContactEmail",
        "PrimaryContactPhone",
        *(f"DeliveryAddress{part}" for part in _ADDRESS),
        *(f"InvoiceAddress{part}" for part in _ADDRESS),
        "TaxExemptNumber",
    ),
    keys=("dataAreaId", "CustomerAccount"),
)

SALES_ORDER_HEADERS_V2 = EntityDefinition(
    label="Sales order headers V2",
    odata_name="SalesOrderHeadersV2",
    fields=(
        "dataAreaId",
        "SalesOrderNumber",
        "OrderingCustomerAccountNumber",
        "InvoiceCustomerAccountNumber",
        "CurrencyCode",
        "SalesOrderName",
        "CustomersOrderReference",
        "CustomerRequisitionNumber",
        "OrderCreationDateTime",
        "RequestedShippingDate",
        "DeliveryModeCode",
        "DefaultShippingWarehouseId",
        "LanguageId",
        "Email",
        "DeliveryAddressName",
        *(f"DeliveryAddress{part}" for part in _ADDRESS),
    ),
    keys=("dataAreaId", "SalesOrderNumber"),
)

# The OData key is InventoryLotId, which D365 assigns; an import identifies a line by its order
# and line number instead.
SALES_ORDER_LINES_V2 = EntityDefinition(
    label="Sales order lines V2",
    odata_name="SalesOrderLines",
    fields=(
        "dataAreaId",
        "SalesOrderNumber",
        "LineNumber",
        "ItemNumber",
        *_DIMENSIONS,
        "LineDescription",
        "OrderedSalesQuantity",
        "SalesUnitSymbol",
        "SalesPrice",
        "LineDiscountAmount",
        "LineAmount",
        "CurrencyCode",
        "ShippingWarehouseId",
    ),
    keys=("dataAreaId", "SalesOrderNumber", "LineNumber"),
)

# Misc. charges on a sales order header (SalesOrderHeaderChargeV2Entity): shipping posted as a
# charge. A charge is identified by its order and ChargeLineNumber.
SALES_ORDER_HEADER_CHARGES_V2 = EntityDefinition(
    label="Sales order header charges V2",
    odata_name="SalesOrderHeaderChargesV2",
    fields=(
        "dataAreaId",
        "SalesOrderNumber",
        "ChargeLineNumber",
        "SalesChargeCode",
        "ChargeCategory",
        "FixedChargeAmount",
        "ChargeAccountingCurrencyCode",
        "ChargeDescription",
    ),
    keys=("dataAreaId", "SalesOrderNumber", "ChargeLineNumber"),
)

RELEASED_PRODUCTS_V2 = EntityDefinition(
    label="Released products V2",
    odata_name="ReleasedProductsV2",
    fields=(
        "dataAreaId",
        "ItemNumber",
        "ProductNumber",
        "ProductName",
        "SearchName",
        "ProductType",
        "ProductSubType",
        "ProductGroupId",
        "ProductDimensionGroupName",
        "SalesPrice",
        "SalesPriceDate",
        "SalesUnitSymbol",
    ),
    keys=("dataAreaId", "ItemNumber"),
)

RELEASED_PRODUCT_VARIANTS_V2 = EntityDefinition(
    label="Released product variants V2",
    odata_name="ReleasedProductVariantsV2",
    fields=(
        "dataAreaId",
        "ItemNumber",
        *_DIMENSIONS,
        "ProductMasterNumber",
        "ProductVariantNumber",
        "ProductName",
    ),
    keys=("dataAreaId", "ItemNumber", *_DIMENSIONS),
)

# Shared products, not per legal entity: no dataAreaId.
PRODUCT_TRANSLATIONS = EntityDefinition(
    label="Product translations",
    odata_name="ProductTranslations",
    fields=("ProductNumber", "LanguageId", "ProductName", "ProductDescription"),
    keys=("ProductNumber", "LanguageId"),
)

SALES_PRICE_AGREEMENTS = EntityDefinition(
    label="Sales price agreements",
    odata_name="SalesPriceAgreements",
    fields=(
        "dataAreaId",
        "RecordId",
        "ItemNumber",
        *_DIMENSIONS,
        "Price",
        "PriceCurrencyCode",
        "SalesPriceQuantity",
        "QuantityUnitySymbol",  # sic: D365's spelling
        "PriceApplicableFromDate",
        "PriceApplicableToDate",
        "PriceCustomerGroupCode",
        "CustomerAccountNumber",
        "PriceWarehouseId",
        "PriceSiteId",
    ),
    keys=("dataAreaId", "RecordId"),
)

INVENTORY_ON_HAND_V2 = EntityDefinition(
    label="Inventory on-hand by warehouse V2",
    odata_name="WarehousesOnHandV2",
    fields=(
        "dataAreaId",
        "ItemNumber",
        *_DIMENSIONS,
        "InventorySiteId",
        "InventoryWarehouseId",
        "OnHandQuantity",
        "ReservedOnHandQuantity",
        "AvailableOnHandQuantity",
        "TotalAvailableQuantity",
    ),
    keys=("dataAreaId", "ItemNumber", *_DIMENSIONS, "InventorySiteId", "InventoryWarehouseId"),
)

DEFINITIONS: dict[str, EntityDefinition] = {
    definition.label: definition
    for definition in (
        CUSTOMERS_V3,
        SALES_ORDER_HEADERS_V2,
        SALES_ORDER_LINES_V2,
        SALES_ORDER_HEADER_CHARGES_V2,
        RELEASED_PRODUCTS_V2,
        RELEASED_PRODUCT_VARIANTS_V2,
        PRODUCT_TRANSLATIONS,
        SALES_PRICE_AGREEMENTS,
        INVENTORY_ON_HAND_V2,
    )
}

_BY_FOLDED_LABEL = {label.casefold(): definition for label, definition in DEFINITIONS.items()}


def by_label(label: str) -> EntityDefinition:
    """The definition for a DMF entity label, matched case-insensitively as D365 does."""
    try:
        return _BY_FOLDED_LABEL[label.strip().casefold()]
    except KeyError:
        known = ", ".join(sorted(DEFINITIONS))
        raise KeyError(f"no entity definition for label '{label}' (known: {known})") from None
