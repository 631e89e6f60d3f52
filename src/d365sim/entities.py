"""The data entities d365sim serves: OData set names, entity types, DMF labels, fields and keys.

Names follow the reference (`reference/d365-fo-apis.md` §5.7); where D365 documents nothing the
choice is recorded in `docs/d365sim.md`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE = "Microsoft.Dynamics.DataEntities"

# OData primitive types used by the served entities.
STRING = "Edm.String"
DECIMAL = "Edm.Decimal"
INT32 = "Edm.Int32"
INT64 = "Edm.Int64"
DATETIME = "Edm.DateTimeOffset"

# D365 enums: OData type name -> member names (responses serialize enums as names).
ENUMS: dict[str, tuple[str, ...]] = {
    "NoYes": ("No", "Yes"),
    "EcoResProductType": ("Item", "Service"),
    "EcoResProductSubtype": ("Product", "ProductMaster"),
    "DirPartyBaseType": ("None", "Person", "Organization"),
    "CustVendorBlocked": ("No", "Invoice", "All", "Payment", "Requisition", "Never"),
    "SalesStatus": ("None", "Backorder", "Delivered", "Invoiced", "Canceled"),
    # how a charge is computed: a fixed amount, per piece, a percentage, …
    "MarkupCategory": ("Fixed", "Pcs", "Percent", "InterCompanyPercent", "External"),
}


@dataclass(frozen=True)
class Field:
    """One entity field. `type` is an Edm type or the short name of an enum in ENUMS."""

    name: str
    type: str = STRING
    required: bool = False  # validated on DMF import, like D365's mandatory fields
    max_length: int | None = None

    @property
    def is_enum(self) -> bool:
        return self.type in ENUMS

    @property
    def edm_type(self) -> str:
        return f"{NAMESPACE}.{self.type}" if self.is_enum else self.type


@dataclass(frozen=True)
class EntitySet:
    """An OData entity set together with its DMF identity."""

    name: str  # OData entity set name, e.g. "CustomersV3"
    type_name: str  # OData entity type, e.g. "CustomerV3"
    label: str  # DMF entity label used in packages, e.g. "Customers V3"
    keys: tuple[str, ...]
    fields: tuple[Field, ...]
    company_scoped: bool = True  # has dataAreaId and obeys the default company
    importable: bool = False  # DMF import validates and writes rows of this entity
    # Fields that identify a row on DMF import when the OData key is system-generated.
    import_keys: tuple[str, ...] = ()
    field_by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_by_name", {f.name: f for f in self.fields})
        missing = [k for k in (*self.keys, *self.import_keys) if k not in self.field_by_name]
        if missing:
            raise ValueError(f"{self.name}: key fields {missing} are not fields")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def row_keys(self) -> tuple[str, ...]:
        """Fields that identify a row when importing (upsert key)."""
        return self.import_keys or self.keys


def _company(*fields: Field) -> tuple[Field, ...]:
    return (Field("dataAreaId", STRING, required=True, max_length=4), *fields)


_DIMENSIONS = (
    Field("ProductColorId", max_length=10),
    Field("ProductConfigurationId", max_length=10),
    Field("ProductSizeId", max_length=10),
    Field("ProductStyleId", max_length=10),
)

_ADDRESS = (
    "Street",
    "City",
    "ZipCode",
    "State",
    "CountryRegionISOCode",
)

ENTITY_SETS: tuple[EntitySet, ...] = (
    EntitySet(
        name="LegalEntities",
        type_name="LegalEntity",
        label="Legal entities",
        keys=("LegalEntityId",),
        company_scoped=False,
        fields=(
            Field("LegalEntityId", required=True, max_length=4),
            Field("Name", max_length=100),
            Field("AccountingCurrency", max_length=3),
            Field("AddressCountryRegionISOCode", max_length=2),
            Field("LanguageId", max_length=7),
        ),
    ),
    EntitySet(
        name="Warehouses",
        type_name="Warehouse",
        label="Warehouses",
        keys=("dataAreaId", "WarehouseId"),
        fields=_company(
            Field("WarehouseId", required=True, max_length=10),
            Field("WarehouseName", max_length=60),
            Field("OperationalSiteId", max_length=10),
            Field("WarehouseType", max_length=20),
        ),
    ),
    EntitySet(
        name="CustomerGroups",
        type_name="CustomerGroup",
        label="Customer groups",
        keys=("dataAreaId", "CustomerGroupId"),
        fields=_company(
            Field("CustomerGroupId", required=True, max_length=10),
            Field("Description", max_length=60),
            Field("PaymentTermId", max_length=10),
        ),
    ),
    EntitySet(
        name="ReleasedProductsV2",
        type_name="ReleasedProductV2",
        label="Released products V2",
        keys=("dataAreaId", "ItemNumber"),
        importable=True,
        fields=_company(
            Field("ItemNumber", required=True, max_length=20),
            Field("ProductNumber", max_length=20),
            Field("ProductName", max_length=60),
            Field("SearchName", max_length=20),
            Field("ProductSearchName", max_length=20),
            Field("ProductType", "EcoResProductType"),
            Field("ProductSubType", "EcoResProductSubtype"),
            Field("ProductGroupId", max_length=10),
            Field("ItemModelGroupId", max_length=10),
            Field("ProductDimensionGroupName", max_length=10),
            Field("StorageDimensionGroupName", max_length=10),
            Field("TrackingDimensionGroupName", max_length=10),
            Field("SalesPrice", DECIMAL),
            Field("SalesPriceDate", DATETIME),
            Field("SalesUnitSymbol", max_length=10),
            Field("InventoryUnitSymbol", max_length=10),
            Field("PurchasePrice", DECIMAL),
            Field("PurchaseUnitSymbol", max_length=10),
            Field("PrimaryVendorAccountNumber", max_length=20),
        ),
    ),
    EntitySet(
        name="ReleasedProductVariantsV2",
        type_name="ReleasedProductVariantV2",
        label="Released product variants V2",
        keys=(
            "dataAreaId",
            "ItemNumber",
            "ProductColorId",
            "ProductConfigurationId",
            "ProductSizeId",
            "ProductStyleId",
        ),
        importable=True,
        fields=_company(
            Field("ItemNumber", required=True, max_length=20),
            *_DIMENSIONS,
            Field("ProductMasterNumber", max_length=20),
            Field("ProductVariantNumber", max_length=20),
            Field("ProductName", max_length=60),
            Field("ProductSearchName", max_length=20),
        ),
    ),
    EntitySet(
        name="ProductTranslations",
        type_name="ProductTranslation",
        label="Product translations",
        keys=("ProductNumber", "LanguageId"),
        company_scoped=False,
        importable=True,
        fields=(
            Field("ProductNumber", required=True, max_length=20),
            Field("LanguageId", required=True, max_length=7),
            Field("ProductName", max_length=60),
            Field("ProductDescription", max_length=1000),
        ),
    ),
    EntitySet(
        name="SalesPriceAgreements",
        type_name="SalesPriceAgreement",
        label="Sales price agreements",
        keys=("dataAreaId", "RecordId"),
        fields=_company(
            Field("RecordId", INT64, required=True),
            Field("ItemNumber", required=True, max_length=20),
            *_DIMENSIONS,
            Field("Price", DECIMAL),
            Field("PriceCurrencyCode", max_length=3),
            Field("SalesPriceQuantity", DECIMAL),
            Field("QuantityUnitySymbol", max_length=10),
            Field("PriceApplicableFromDate", DATETIME),
            Field("PriceApplicableToDate", DATETIME),
            Field("PriceCustomerGroupCode", max_length=10),
            Field("CustomerAccountNumber", max_length=20),
            Field("PriceWarehouseId", max_length=10),
            Field("PriceSiteId", max_length=10),
            Field("WillSearchContinue", "NoYes"),
        ),
    ),
    EntitySet(
        name="WarehousesOnHandV2",
        type_name="WarehouseOnHandV2",
        label="Inventory on-hand by warehouse V2",
        keys=(
            "dataAreaId",
            "ItemNumber",
            "ProductColorId",
            "ProductConfigurationId",
            "ProductSizeId",
            "ProductStyleId",
            "InventorySiteId",
            "InventoryWarehouseId",
        ),
        fields=_company(
            Field("ItemNumber", required=True, max_length=20),
            Field("ProductName", max_length=60),
            *_DIMENSIONS,
            Field("ProductVersionId", max_length=10),
            Field("InventorySiteId", max_length=10),
            Field("InventoryWarehouseId", max_length=10),
            Field("OnHandQuantity", DECIMAL),
            Field("ReservedOnHandQuantity", DECIMAL),
            Field("AvailableOnHandQuantity", DECIMAL),
            Field("OrderedQuantity", DECIMAL),
            Field("ReservedOrderedQuantity", DECIMAL),
            Field("AvailableOrderedQuantity", DECIMAL),
            Field("OnOrderQuantity", DECIMAL),
            Field("TotalAvailableQuantity", DECIMAL),
            Field("AreWarehouseManagementProcessesUsed", "NoYes"),
        ),
    ),
    EntitySet(
        name="CustomersV3",
        type_name="CustomerV3",
        label="Customers V3",
        keys=("dataAreaId", "CustomerAccount"),
        importable=True,
        fields=_company(
            Field("CustomerAccount", required=True, max_length=20),
            Field("PartyType", "DirPartyBaseType"),
            Field("PartyNumber", max_length=40),
            Field("OrganizationName", max_length=100),
            Field("PersonFirstName", max_length=25),
            Field("PersonLastName", max_length=25),
            Field("NameAlias", max_length=20),
            Field("CustomerGroupId", required=True, max_length=10),
            Field("SalesCurrencyCode", required=True, max_length=3),
            Field("CreditLimit", DECIMAL),
            Field("PrimaryContactEmail", max_length=255),
            Field("PrimaryContactPhone", max_length=255),
            *(Field(f"DeliveryAddress{part}", max_length=250) for part in _ADDRESS),
            *(Field(f"InvoiceAddress{part}", max_length=250) for part in _ADDRESS),
            Field("SalesTaxGroup", max_length=10),
            Field("TaxExemptNumber", max_length=20),
            Field("PaymentTerms", max_length=10),
            Field("OnHoldStatus", "CustVendorBlocked"),
            Field("LanguageId", max_length=7),
            Field("CustomersOrderReference", max_length=60),
        ),
    ),
    EntitySet(
        name="SalesOrderHeadersV2",
        type_name="SalesOrderHeaderV2",
        label="Sales order headers V2",
        keys=("dataAreaId", "SalesOrderNumber"),
        importable=True,
        fields=_company(
            Field("SalesOrderNumber", required=True, max_length=20),
            Field("OrderingCustomerAccountNumber", required=True, max_length=20),
            Field("InvoiceCustomerAccountNumber", max_length=20),
            Field("CurrencyCode", required=True, max_length=3),
            Field("SalesOrderName", max_length=100),
            Field("CustomersOrderReference", max_length=60),
            Field("CustomerRequisitionNumber", max_length=20),
            Field("SalesOrderStatus", "SalesStatus"),
            Field("OrderCreationDateTime", DATETIME),
            Field("RequestedShippingDate", DATETIME),
            Field("DeliveryModeCode", max_length=10),
            Field("PaymentTermsName", max_length=10),
            Field("DefaultShippingWarehouseId", max_length=10),
            Field("DefaultShippingSiteId", max_length=10),
            Field("LanguageId", max_length=7),
            Field("Email", max_length=255),
            Field("DeliveryAddressName", max_length=100),
            *(Field(f"DeliveryAddress{part}", max_length=250) for part in _ADDRESS),
            Field("TotalDiscountPercentage", DECIMAL),
        ),
    ),
    EntitySet(
        name="SalesOrderLines",
        type_name="SalesOrderLine",
        label="Sales order lines V2",
        keys=("dataAreaId", "InventoryLotId"),
        importable=True,
        import_keys=("dataAreaId", "SalesOrderNumber", "LineNumber"),
        fields=_company(
            Field("InventoryLotId", max_length=20),
            Field("SalesOrderNumber", required=True, max_length=20),
            Field("LineNumber", DECIMAL, required=True),
            Field("ItemNumber", required=True, max_length=20),
            *_DIMENSIONS,
            Field("LineDescription", max_length=1000),
            Field("OrderedSalesQuantity", DECIMAL, required=True),
            Field("SalesUnitSymbol", max_length=10),
            Field("SalesPrice", DECIMAL),
            Field("SalesPriceQuantity", DECIMAL),
            Field("LineDiscountAmount", DECIMAL),
            Field("LineDiscountPercentage", DECIMAL),
            Field("LineAmount", DECIMAL),
            Field("CurrencyCode", max_length=3),
            Field("SalesOrderLineStatus", "SalesStatus"),
            Field("ShippingWarehouseId", max_length=10),
            Field("ShippingSiteId", max_length=10),
            Field("RequestedShippingDate", DATETIME),
            Field("CustomersLineNumber", INT32),
        ),
    ),
    # "Sales order header charges V2" (SalesOrderHeaderChargeV2Entity): misc. charges on a sales
    # order header, e.g. freight. Fields follow Microsoft's CDM schema of the entity; the set name
    # and the key (order + ChargeLineNumber) are as third-party OData clients use them.
    EntitySet(
        name="SalesOrderHeaderChargesV2",
        type_name="SalesOrderHeaderChargeV2",
        label="Sales order header charges V2",
        keys=("dataAreaId", "SalesOrderNumber", "ChargeLineNumber"),
        importable=True,
        fields=_company(
            Field("SalesOrderNumber", required=True, max_length=20),
            Field("ChargeLineNumber", DECIMAL, required=True),
            Field("SalesChargeCode", required=True, max_length=10),
            Field("ChargeCategory", "MarkupCategory"),
            Field("FixedChargeAmount", DECIMAL),
            Field("ChargePercentage", DECIMAL),
            Field("ExternalChargeAmount", DECIMAL),
            Field("ChargeAccountingCurrencyCode", max_length=3),
            Field("ChargeDescription", max_length=60),
            Field("SalesTaxGroupCode", max_length=10),
            Field("SalesTaxItemGroupCode", max_length=10),
            Field("WillInvoiceProcessingKeepCharge", "NoYes"),
            Field("IsIntercompanyCharge", "NoYes"),
        ),
    ),
    EntitySet(
        name="SalesInvoiceHeadersV2",
        type_name="SalesInvoiceHeaderV2",
        label="Sales invoice headers V2",
        keys=("dataAreaId", "InvoiceNumber"),
        fields=_company(
            Field("InvoiceNumber", required=True, max_length=20),
            Field("InvoiceDate", DATETIME),
            Field("SalesOrderNumber", max_length=20),
            Field("InvoiceCustomerAccountNumber", max_length=20),
            Field("CurrencyCode", max_length=3),
            Field("TotalInvoiceAmount", DECIMAL),
            Field("TotalTaxAmount", DECIMAL),
            Field("TotalDiscountAmount", DECIMAL),
            Field("PaymentTermsName", max_length=10),
        ),
    ),
)

BY_NAME: dict[str, EntitySet] = {e.name: e for e in ENTITY_SETS}
BY_LABEL: dict[str, EntitySet] = {e.label.casefold(): e for e in ENTITY_SETS}


def by_label(label: str) -> EntitySet | None:
    """Find an entity by its DMF label; D365 matches labels case-insensitively."""
    return BY_LABEL.get(label.strip().casefold())
