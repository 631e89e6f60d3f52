"""Deterministic seed data for every d365sim entity set: two Contoso companies and their catalog.

Rows are generated lazily from pure functions of (seed, index), so each set can be read alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import NamedTuple

from d365sim.entities import ENTITY_SETS, EntitySet

Row = dict[str, object]
Dims = tuple[str, str, str, str]  # colour, configuration, size, style: the entities' key order

# D365 writes an empty date as 1900-01-01T00:00:00Z; it means "no end date" on trade agreements.
NO_DATE = datetime(1900, 1, 1, tzinfo=UTC)
FIRST_RECORD_ID = 5637144576  # where RecIds of a fresh D365 table start
MAX_CUSTOMERS = 50_000
MAX_ORDERS = 200
MASTER_EVERY = 5  # every 5th product is a product master: 20 %
BIG_MASTER_EVERY = 97  # every 97th master has 12 colours x 10 sizes, over the 100-variant limit

_M64 = (1 << 64) - 1
# D365 serializes date-only fields as noon UTC so that no time zone moves them to another day.
_DAYS = tuple(datetime(2023, 1, 1, 12, tzinfo=UTC) + timedelta(days=d) for d in range(1200))
_INT = tuple(Decimal(i) for i in range(1001))
_SCALE = {0: Decimal(1), 2: Decimal("0.01"), 3: Decimal("0.001")}
_CENT = _SCALE[2]
_ZERO2 = Decimal(0) * _CENT
_PLAIN: tuple[Dims, ...] = (("", "", "", ""),)


def _mix(x: int) -> int:
    """splitmix64's finalizer: a cheap, well-spread pure function, so entities agree on a product
    without sharing state or a random stream."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _base(seed: int, salt: int) -> int:
    return _mix(seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03)


def _money(minor: int, decimals: int = 2) -> Decimal:
    # Multiplying keeps the exponent, so 12300 cents stay "123.00" rather than "123".
    return Decimal(minor) * _SCALE[decimals]


class _Cents(dict[int, Decimal]):
    """Amounts in cents as Decimals, built once each: prices repeat across items and companies."""

    def __missing__(self, cents: int) -> Decimal:
        amount = self[cents] = _money(cents)
        return amount


@dataclass(frozen=True)
class _Warehouse:
    id: str
    name: str
    site: str
    wms: bool


@dataclass(frozen=True)
class _Currency:
    """An extra trade-agreement currency: minor units = company cents * num // den."""

    code: str
    decimals: int
    num: int
    den: int
    every: int  # items with index % every == offset get a price in it
    offset: int


@dataclass(frozen=True)
class _Company:
    id: str
    name: str
    currency: str
    country: str
    language: str
    prefix: str
    rate: int  # company-currency cents per 100 base cents
    vendors: tuple[str, ...]
    warehouses: tuple[_Warehouse, ...]
    extra_currencies: tuple[_Currency, ...]
    cities: tuple[tuple[str, str, str], ...]  # city, state, zip
    streets: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    org_names: tuple[str, ...]
    org_suffixes: tuple[str, ...]

    def cents(self, base_cents: int) -> int:
        return (base_cents * self.rate + 50) // 100

    def street(self, r: int) -> str:
        name, number = self.streets[r % len(self.streets)], 1 + (r >> 3) % 98
        return f"{number} {name}" if self.country == "US" else f"{name} {number}"


COMPANIES: tuple[_Company, ...] = (
    _Company(
        id="usmf",
        name="Contoso Entertainment System USA",
        currency="USD",
        country="US",
        language="en-us",
        prefix="US",
        rate=100,
        vendors=("US-101", "US-102", "US-104", "US-111"),
        warehouses=(
            _Warehouse("11", "Main warehouse", "1", False),
            _Warehouse("12", "Retail warehouse", "1", False),
            _Warehouse("21", "West Coast warehouse", "2", False),
            _Warehouse("24", "Distribution center", "2", True),
        ),
        extra_currencies=(_Currency("CAD", 2, 136, 100, 5, 1),),
        cities=(
            ("Redmond", "WA", "98052"),
            ("Seattle", "WA", "98101"),
            ("Portland", "OR", "97201"),
            ("San Francisco", "CA", "94105"),
            ("Los Angeles", "CA", "90012"),
            ("Chicago", "IL", "60601"),
            ("New York", "NY", "10001"),
            ("Boston", "MA", "02108"),
            ("Austin", "TX", "78701"),
            ("Denver", "CO", "80202"),
            ("Atlanta", "GA", "30303"),
            ("Miami", "FL", "33130"),
        ),
        streets=(
            "Main Street",
            "Oak Avenue",
            "Pine Street",
            "Maple Drive",
            "Cedar Lane",
            "Market Street",
            "Lake Shore Drive",
            "Elm Street",
        ),
        first_names=(
            "James",
            "Mary",
            "Robert",
            "Patricia",
            "John",
            "Jennifer",
            "Michael",
            "Linda",
            "David",
            "Susan",
            "María",
            "Wei",
        ),
        last_names=(
            "Smith",
            "Johnson",
            "Williams",
            "Brown",
            "Jones",
            "García",
            "Miller",
            "Davis",
            "Nguyen",
            "O'Brien",
            "Martinez",
            "Lee",
        ),
        org_names=(
            "Adatum",
            "Fourth Coffee",
            "Trey Research",
            "Coho Winery",
            "Alpine Ski House",
            "Relecloud",
            "Woodgrove",
            "Wingtip Toys",
            "Lamna Healthcare",
            "Margie's Travel",
        ),
        org_suffixes=(" Corporation", " Inc.", " LLC", " Stores"),
    ),
    _Company(
        id="demf",
        name="Contoso Entertainment System Germany",
        currency="EUR",
        country="DE",
        language="de",
        prefix="DE",
        rate=92,
        vendors=("DE-01001", "DE-01002", "DE-01003"),
        warehouses=(
            _Warehouse("DE-01", "Zentrallager Hamburg", "1", True),
            _Warehouse("DE-02", "Lager München", "1", False),
            _Warehouse("DE-03", "Filiallager Berlin", "2", False),
        ),
        extra_currencies=(
            _Currency("CHF", 2, 96, 100, 5, 1),
            _Currency("JPY", 0, 162, 100, 50, 7),
            _Currency("KWD", 3, 33, 10, 100, 11),
            _Currency("BHD", 3, 41, 10, 100, 61),
        ),
        cities=(
            ("Berlin", "BE", "10115"),
            ("Hamburg", "HH", "20095"),
            ("München", "BY", "80331"),
            ("Köln", "NW", "50667"),
            ("Frankfurt am Main", "HE", "60311"),
            ("Stuttgart", "BW", "70173"),
            ("Düsseldorf", "NW", "40213"),
            ("Leipzig", "SN", "04109"),
            ("Dresden", "SN", "01067"),
            ("Nürnberg", "BY", "90402"),
        ),
        streets=(
            "Hauptstraße",
            "Bahnhofstraße",
            "Gartenweg",
            "Schillerstraße",
            "Goethestraße",
            "Lindenallee",
            "Marktplatz",
            "Bergstraße",
        ),
        first_names=(
            "Lukas",
            "Anna",
            "Jonas",
            "Lea",
            "Felix",
            "Marie",
            "Paul",
            "Sophie",
            "Jürgen",
            "Sören",
        ),
        last_names=(
            "Müller",
            "Schmidt",
            "Schneider",
            "Fischer",
            "Weber",
            "Meyer",
            "Wagner",
            "Becker",
            "Schäfer",
            "Groß",
        ),
        org_names=(
            "Fabrikam",
            "Tailwind Traders",
            "Nordwind Handel",
            "Bergsport Müller",
            "Stadtgarten",
            "Alpenblick",
            "Rheinland Versand",
            "Elbe Logistik",
        ),
        org_suffixes=(" GmbH", " AG", " KG", " GmbH & Co. KG"),
    ),
)

# Customer group id, description, payment terms: the same in both companies.
CUSTOMER_GROUPS = (
    ("10", "Retail customers", "Net10"),
    ("20", "Wholesale customers", "Net30"),
    ("30", "Internet customers", "Prepaid"),
    ("90", "Intercompany customers", "Net45"),
)
_TERMS = {group: terms for group, _, terms in CUSTOMER_GROUPS}

_BRANDS = (
    "Contoso",
    "Fabrikam",
    "Litware",
    "Proseware",
    "Northwind",
    "Tailspin",
    "Adventure Works",
    "Wide World",
)
_ADJECTIVES = (
    ("Trail", "Wander"),
    ("Urban", "Stadt"),
    ("Classic", "Klassik"),
    ("Alpine", "Alpin"),
    ("Coastal", "Küsten"),
    ("Summit", "Gipfel"),
    ("Travel", "Reise"),
    ("Sport", "Sport"),
)
_SIZE_SCALES = {
    "L": ("XS", "S", "M", "L", "XL", "XXL", "3XL"),
    "W": ("28", "30", "32", "34", "36", "38", "40", "42", "44", "46"),
    "S": ("37", "38", "39", "40", "41", "42", "43", "44", "45", "46"),
}
# English, German, product group, size scale ("" for products without sizes).
_NOUNS = (
    ("Jacket", "Jacke", "Apparel", "L"),
    ("Shirt", "Hemd", "Apparel", "L"),
    ("Hoodie", "Kapuzenpulli", "Apparel", "L"),
    ("Trousers", "Hose", "Apparel", "W"),
    ("Boots", "Stiefel", "Footwear", "S"),
    ("Sneakers", "Turnschuhe", "Footwear", "S"),
    ("Backpack", "Rucksack", "Bags", ""),
    ("Duffel Bag", "Reisetasche", "Bags", ""),
    ("Headphones", "Kopfhörer", "Audio", ""),
    ("Speaker", "Lautsprecher", "Audio", ""),
    ("Desk Lamp", "Schreibtischlampe", "Home", ""),
    ("Coffee Mug", "Kaffeebecher", "Home", ""),
)
_SIZED = 6  # _NOUNS[:6] have sizes
_APPAREL = 4  # _NOUNS[:4] come in styles
_TEN_SIZES = (3, 4, 5)  # nouns whose scale has the 10 sizes a big master needs
_COLOURS = (
    "Black",
    "White",
    "Red",
    "Blue",
    "Green",
    "Grey",
    "Navy",
    "Brown",
    "Yellow",
    "Orange",
    "Purple",
    "Silver",
    "Beige",
    "Pink",
)
_STYLES = ("Classic", "Slim", "Relaxed", "Sport", "Vintage")
_CONFIGS = ("Standard", "Premium", "Pro", "Compact", "Deluxe")
_PRICE_ENDINGS = (99, 95, 0, 49)
_DELIVERY_MODES = ("Truck", "Parcel", "Air")
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "á": "a", "í": "i", "'": ""})


def _email_part(name: str) -> str:
    return name.lower().translate(_ASCII).replace(" ", "")


class _Text(NamedTuple):
    """The words of one brand, adjective and noun combination, shared by many products."""

    name: str
    name_de: str
    search: str
    brand: str
    noun: str
    noun_de: str
    group: str


class _Shape(NamedTuple):
    """A product's dimension matrix, shared by every product with the same one."""

    dim_group: str
    skus: tuple[Dims, ...]
    suffixes: tuple[str, ...]  # appended to the product name to name each variant


_PLAIN_SHAPE = _Shape("", _PLAIN, ("",))


def _shape(dim_group: str, skus: tuple[Dims, ...]) -> _Shape:
    return _Shape(dim_group, skus, tuple("".join(f" {d}" for d in dims if d) for dims in skus))


def _text(h: int, noun: int) -> _Text:
    en, de, group, _ = _NOUNS[noun]
    brand = _BRANDS[h & 7]
    adj_en, adj_de = _ADJECTIVES[(h >> 3) & 7]
    name = f"{brand} {adj_en} {en}"
    name_de = f"{brand} {adj_de}{de.lower()}"
    return _Text(name, name_de, name[:20].rstrip(), brand, en, de, group)


class _Product:
    __slots__ = ("cents", "h", "index", "item", "shape", "text")

    def __init__(self, index: int, item: str, h: int, text: _Text, shape: _Shape) -> None:
        self.index = index
        self.item = item
        self.h = h
        self.text = text
        self.shape = shape
        self.cents = (5 + (h >> 44) % 295) * 100 + _PRICE_ENDINGS[(h >> 54) & 3]

    @property
    def variant_priced(self) -> bool:
        # A quarter of the masters price each variant on its own (larger sizes cost more).
        return bool(self.shape.dim_group) and (self.index // MASTER_EVERY) % 4 == 1

    def sku_cents(self, company: _Company, k: int) -> int:
        base = company.cents(self.cents)
        if self.variant_priced:
            return base + base * (k % 4) // 20
        return base


def _colours(start: int, n: int) -> tuple[str, ...]:
    return tuple(_COLOURS[(start + j) % len(_COLOURS)] for j in range(n))


def _build_shape(key: tuple[int, ...]) -> _Shape:
    if key[0] == 3:
        sizes = _SIZE_SCALES[_NOUNS[key[1]][3]]
        colours = _colours(key[2], 12)
        return _shape("SizeCol", tuple((c, "", s, "") for c in colours for s in sizes))
    if key[0] == 0:
        _, noun, colour, n_colours, n_sizes, first = key
        sizes = _SIZE_SCALES[_NOUNS[noun][3]][first : first + n_sizes]
        colours = _colours(colour, n_colours)
        return _shape("SizeCol", tuple((c, "", s, "") for c in colours for s in sizes))
    if key[0] == 1:
        _, colour, n_colours, n_styles = key
        colours = _colours(colour, n_colours)
        return _shape("Style", tuple((c, "", "", s) for c in colours for s in _STYLES[:n_styles]))
    return _shape("Config", tuple(("", c, "", "") for c in _CONFIGS[: key[1]]))


class _Catalog:
    """Everything derivable from (products, seed) without generating rows."""

    def __init__(self, products: int, seed: int) -> None:
        if products < 0:
            raise ValueError("products must not be negative")
        self.products = products
        self.seed = seed
        self._item_width = max(4, len(str(products)))
        self.customers = min(MAX_CUSTOMERS, max(10, products // 10))
        self.order_count = min(MAX_ORDERS, products)
        self._product_base = _base(seed, 1)
        # Few distinct names and matrices exist, so products share them instead of rebuilding.
        self._texts: dict[int, _Text] = {}
        self._shapes: dict[tuple[int, ...], _Shape] = {}

    def rng(self, entity: str) -> random.Random:
        # Seeding with a str hashes it with SHA-512: stable across runs and PYTHONHASHSEED.
        return random.Random(f"{self.seed}/{entity}")

    def product(self, i: int) -> _Product:
        h = _mix(self._product_base + i)
        if i % MASTER_EVERY != MASTER_EVERY - 1:
            noun, shape = (h >> 6) % len(_NOUNS), _PLAIN_SHAPE
        else:
            noun, shape = self._master(i // MASTER_EVERY, h)
        key = (h & 63) | noun << 6
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = _text(h, noun)
        return _Product(i, "D" + str(i + 1).zfill(self._item_width), h, text, shape)

    def _master(self, master: int, h: int) -> tuple[int, _Shape]:
        colour = (h >> 33) % len(_COLOURS)
        kind = (h >> 23) % 20
        if master % BIG_MASTER_EVERY == BIG_MASTER_EVERY - 1:
            noun = _TEN_SIZES[(h >> 6) % len(_TEN_SIZES)]
            key: tuple[int, ...] = (3, noun, colour)
        elif kind < 15:
            noun = (h >> 6) % _SIZED
            sizes = 2 + (h >> 30) % 4
            scale = len(_SIZE_SCALES[_NOUNS[noun][3]])
            key = (0, noun, colour, 2 + (h >> 28) % 3, sizes, (h >> 38) % (scale - sizes + 1))
        elif kind < 18:
            noun = (h >> 6) % _APPAREL
            key = (1, colour, 2 + (h >> 28) % 3, 2 + (h >> 30) % 3)
        else:
            noun = _SIZED + (h >> 6) % (len(_NOUNS) - _SIZED)
            key = (2, 2 + (h >> 30) % 3)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _build_shape(key)
        return noun, shape

    def account(self, company: _Company, k: int) -> str:
        return f"{company.prefix}-{k:06d}"

    def customer(self, ci: int, k: int) -> Row:
        """Customer k (1-based) of company ci; customer 1 is the other company (intercompany)."""
        c = COMPANIES[ci]
        h = _mix(_base(self.seed, 2 + ci) + k)
        city, state, zip_code = c.cities[(h >> 8) % len(c.cities)]
        street = c.street(h >> 16)
        inv_street, inv_city, inv_state, inv_zip = street, city, state, zip_code
        person = k != 1 and h % 5 < 2
        if person:
            first = c.first_names[(h >> 30) % len(c.first_names)]
            last = c.last_names[(h >> 34) % len(c.last_names)]
            org = ""
            alias = last[:20]
            group = "10" if (h >> 38) & 1 else "30"
            email = f"{_email_part(first)}.{_email_part(last)}{k}@example.com"
            credit = _ZERO2
        else:
            first = last = ""
            if k == 1:
                org, group = COMPANIES[1 - ci].name, "90"
            else:
                base = c.org_names[(h >> 30) % len(c.org_names)]
                org, group = base + c.org_suffixes[(h >> 34) % len(c.org_suffixes)], "20"
            alias = org[:20].rstrip()
            email = f"orders{k}@{_email_part(org.split(' ')[0])}.example.com"
            credit = _money((10 + (h >> 38) % 240) * 100_000)
            if (h >> 46) % 5 == 0:
                # A head office that is invoiced at another address than it receives goods.
                inv_city, inv_state, inv_zip = c.cities[(h >> 49) % len(c.cities)]
                inv_street = c.street(h >> 52)
        if c.country == "US":
            phone = f"+1 425-555-{(h >> 40) % 10000:04d}"
            tax_group = state
            vat = f"{10 + (h >> 20) % 89}-{(h >> 27) % 10_000_000:07d}" if group == "20" else ""
        else:
            phone = f"+49 40 555{(h >> 40) % 10000:04d}"
            tax_group = "DOM"
            vat = f"DE{100_000_000 + (h >> 20) % 900_000_000}" if not person else ""
        return {
            "dataAreaId": c.id,
            "CustomerAccount": self.account(c, k),
            "PartyType": "Person" if person else "Organization",
            "PartyNumber": f"{ci * 100_000 + k:09d}",
            "OrganizationName": org,
            "PersonFirstName": first,
            "PersonLastName": last,
            "NameAlias": alias,
            "CustomerGroupId": group,
            "SalesCurrencyCode": c.currency,
            "CreditLimit": credit,
            "PrimaryContactEmail": email,
            "PrimaryContactPhone": phone,
            "DeliveryAddressStreet": street,
            "DeliveryAddressCity": city,
            "DeliveryAddressZipCode": zip_code,
            "DeliveryAddressState": state,
            "DeliveryAddressCountryRegionISOCode": c.country,
            "InvoiceAddressStreet": inv_street,
            "InvoiceAddressCity": inv_city,
            "InvoiceAddressZipCode": inv_zip,
            "InvoiceAddressState": inv_state,
            "InvoiceAddressCountryRegionISOCode": c.country,
            "SalesTaxGroup": tax_group,
            "TaxExemptNumber": vat,
            "PaymentTerms": _TERMS[group],
            "OnHoldStatus": "No",
            "LanguageId": c.language,
            "CustomersOrderReference": "",
        }

    def orders(self, ci: int) -> Iterator[tuple[Row, list[Row], int, int]]:
        """Orders of company ci: header, lines, gross and net amount in cents.

        Headers, lines and invoices each read this, so they agree without sharing state."""
        c = COMPANIES[ci]
        wh = c.warehouses[0]
        base = _base(self.seed, 10 + ci)
        lot = 0
        for n in range(1, self.order_count + 1):
            h = _mix(base + n)
            customer = self.customer(ci, 1 + h % self.customers)
            status = "Invoiced" if (h >> 20) % 10 < 7 else "Backorder"
            day = 365 + (n - 1) * 300 // self.order_count
            created = _DAYS[day] + timedelta(hours=(h >> 24) % 9 - 4, minutes=(h >> 28) % 60)
            requested = _DAYS[day + 3]
            number = f"SO-{n:06d}"
            wholesale = customer["CustomerGroupId"] in ("20", "90")
            lines: list[Row] = []
            gross = net = 0
            for j in range(1, 2 + (h >> 8) % 4):
                lh = _mix(h + j)
                p = self.product(lh % self.products)
                k = (lh >> 20) % len(p.shape.skus)
                dims = p.shape.skus[k]
                qty = (1 + (lh >> 32) % 5) * (10 if wholesale else 1)
                price = p.sku_cents(c, k)
                pct = 10 if (lh >> 40) % 5 == 0 else 0
                amount = (qty * price * (100 - pct) + 50) // 100
                gross += qty * price
                net += amount
                lot += 1
                lines.append(
                    {
                        "dataAreaId": c.id,
                        "InventoryLotId": f"{lot:07d}",
                        "SalesOrderNumber": number,
                        "LineNumber": _INT[j],
                        "ItemNumber": p.item,
                        "ProductColorId": dims[0],
                        "ProductConfigurationId": dims[1],
                        "ProductSizeId": dims[2],
                        "ProductStyleId": dims[3],
                        "LineDescription": p.text.name + p.shape.suffixes[k],
                        "OrderedSalesQuantity": _INT[qty],
                        "SalesUnitSymbol": "ea",
                        "SalesPrice": _money(price),
                        "SalesPriceQuantity": _INT[1],
                        "LineDiscountAmount": _ZERO2,
                        "LineDiscountPercentage": _INT[pct],
                        "LineAmount": _money(amount),
                        "CurrencyCode": c.currency,
                        "SalesOrderLineStatus": status,
                        "ShippingWarehouseId": wh.id,
                        "ShippingSiteId": wh.site,
                        "RequestedShippingDate": requested,
                        "CustomersLineNumber": j,
                    }
                )
            name = str(customer["OrganizationName"]) or " ".join(
                (str(customer["PersonFirstName"]), str(customer["PersonLastName"]))
            )
            org = customer["PartyType"] == "Organization"
            header: Row = {
                "dataAreaId": c.id,
                "SalesOrderNumber": number,
                "OrderingCustomerAccountNumber": customer["CustomerAccount"],
                "InvoiceCustomerAccountNumber": customer["CustomerAccount"],
                "CurrencyCode": c.currency,
                "SalesOrderName": name,
                "CustomersOrderReference": f"PO-{(h >> 36) % 100_000:05d}" if org else "",
                "CustomerRequisitionNumber": "",
                "SalesOrderStatus": status,
                "OrderCreationDateTime": created,
                "RequestedShippingDate": requested,
                "DeliveryModeCode": _DELIVERY_MODES[(h >> 44) % len(_DELIVERY_MODES)],
                "PaymentTermsName": customer["PaymentTerms"],
                "DefaultShippingWarehouseId": wh.id,
                "DefaultShippingSiteId": wh.site,
                "LanguageId": c.language,
                "Email": customer["PrimaryContactEmail"],
                "DeliveryAddressName": name,
                "DeliveryAddressStreet": customer["DeliveryAddressStreet"],
                "DeliveryAddressCity": customer["DeliveryAddressCity"],
                "DeliveryAddressZipCode": customer["DeliveryAddressZipCode"],
                "DeliveryAddressState": customer["DeliveryAddressState"],
                "DeliveryAddressCountryRegionISOCode": c.country,
                "TotalDiscountPercentage": _ZERO2,
            }
            yield header, lines, gross, net


def _legal_entities(_: _Catalog) -> Iterator[Row]:
    for c in COMPANIES:
        yield {
            "LegalEntityId": c.id,
            "Name": c.name,
            "AccountingCurrency": c.currency,
            "AddressCountryRegionISOCode": c.country,
            "LanguageId": c.language,
        }


def _warehouses(_: _Catalog) -> Iterator[Row]:
    for c in COMPANIES:
        for w in c.warehouses:
            yield {
                "dataAreaId": c.id,
                "WarehouseId": w.id,
                "WarehouseName": w.name,
                "OperationalSiteId": w.site,
                "WarehouseType": "Standard",
            }


def _customer_groups(_: _Catalog) -> Iterator[Row]:
    for c in COMPANIES:
        for group, description, terms in CUSTOMER_GROUPS:
            yield {
                "dataAreaId": c.id,
                "CustomerGroupId": group,
                "Description": description,
                "PaymentTermId": terms,
            }


def _released_products(cat: _Catalog) -> Iterator[Row]:
    money = _Cents()
    for c in COMPANIES:
        cid = c.id
        vendors = c.vendors
        for i in range(cat.products):
            p = cat.product(i)
            h, t, dim_group = p.h, p.text, p.shape.dim_group
            cents = c.cents(p.cents)
            yield {
                "dataAreaId": cid,
                "ItemNumber": p.item,
                "ProductNumber": p.item,
                "ProductName": t.name,
                "SearchName": t.search,
                "ProductSearchName": t.search,
                "ProductType": "Item",
                "ProductSubType": "ProductMaster" if dim_group else "Product",
                "ProductGroupId": t.group,
                "ItemModelGroupId": "FIFO",
                "ProductDimensionGroupName": dim_group,
                "StorageDimensionGroupName": "SiteWH",
                "TrackingDimensionGroupName": "None",
                "SalesPrice": money[cents],
                "SalesPriceDate": _DAYS[(h >> 8) % 365],
                "SalesUnitSymbol": "ea",
                "InventoryUnitSymbol": "ea",
                "PurchasePrice": money[cents * 55 // 100],
                "PurchaseUnitSymbol": "ea",
                "PrimaryVendorAccountNumber": vendors[(h >> 12) % len(vendors)],
            }


def _released_variants(cat: _Catalog) -> Iterator[Row]:
    for c in COMPANIES:
        cid = c.id
        for i in range(MASTER_EVERY - 1, cat.products, MASTER_EVERY):
            p = cat.product(i)
            item = p.item
            name, suffixes = p.text.name, p.shape.suffixes
            for k, dims in enumerate(p.shape.skus):
                number = f"{item}-{k + 1:03d}"
                yield {
                    "dataAreaId": cid,
                    "ItemNumber": item,
                    "ProductColorId": dims[0],
                    "ProductConfigurationId": dims[1],
                    "ProductSizeId": dims[2],
                    "ProductStyleId": dims[3],
                    "ProductMasterNumber": item,
                    "ProductVariantNumber": number,
                    "ProductName": name + suffixes[k],
                    "ProductSearchName": number,
                }


def _translations(cat: _Catalog) -> Iterator[Row]:
    for i in range(cat.products):
        p = cat.product(i)
        t = p.text
        yield {
            "ProductNumber": p.item,
            "LanguageId": "en-us",
            "ProductName": t.name,
            "ProductDescription": f"{t.name}: {t.noun.lower()} from the {t.brand} range.",
        }
        yield {
            "ProductNumber": p.item,
            "LanguageId": "de",
            "ProductName": t.name_de,
            "ProductDescription": f"{t.name_de}: {t.noun_de} aus dem Sortiment von {t.brand}.",
        }


def _price(
    record_id: int,
    cid: str,
    item: str,
    dims: Dims,
    price: Decimal,
    currency: str,
    start: datetime = NO_DATE,
    end: datetime = NO_DATE,
    group: str = "",
    account: str = "",
    more: str = "No",
) -> Row:
    return {
        "dataAreaId": cid,
        "RecordId": record_id,
        "ItemNumber": item,
        "ProductColorId": dims[0],
        "ProductConfigurationId": dims[1],
        "ProductSizeId": dims[2],
        "ProductStyleId": dims[3],
        "Price": price,
        "PriceCurrencyCode": currency,
        "SalesPriceQuantity": _INT[1],
        "QuantityUnitySymbol": "ea",
        "PriceApplicableFromDate": start,
        "PriceApplicableToDate": end,
        "PriceCustomerGroupCode": group,
        "CustomerAccountNumber": account,
        "PriceWarehouseId": "",
        "PriceSiteId": "",
        "WillSearchContinue": more,
    }


def _price_agreements(cat: _Catalog) -> Iterator[Row]:
    # RecIds are unique per table across companies, as in D365.
    ids = count(FIRST_RECORD_ID)
    plain = _PLAIN[0]
    money = _Cents()
    for c in COMPANIES:
        cid, cur = c.id, c.currency
        for i in range(cat.products):
            p = cat.product(i)
            item, h = p.item, p.h
            base = c.cents(p.cents)
            since = _DAYS[(h >> 8) % 365]
            # The base price is open-ended and lets D365 continue to more specific prices.
            yield _price(next(ids), cid, item, plain, money[base], cur, since, more="Yes")
            if p.variant_priced:
                for k, dims in enumerate(p.shape.skus):
                    yield _price(next(ids), cid, item, dims, money[p.sku_cents(c, k)], cur, since)
            if i % 4 == 0:
                yield _price(next(ids), cid, item, plain, money[base * 85 // 100], cur, group="20")
            if i % 10 == 3:
                day = 400 + (h >> 16) % 300
                sale = money[base * 80 // 100]
                yield _price(next(ids), cid, item, plain, sale, cur, _DAYS[day], _DAYS[day + 30])
            if i % 50 == 9 and cat.customers > 1:
                account = cat.account(c, 2 + (i // 50) % (cat.customers - 1))
                price = money[base * 90 // 100]
                yield _price(next(ids), cid, item, plain, price, cur, account=account)
            for x in c.extra_currencies:
                if i % x.every == x.offset:
                    price = _money(base * x.num // x.den, x.decimals)
                    yield _price(next(ids), cid, item, plain, price, x.code)


_Stock = tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal]


def _stock_profile(r: int) -> _Stock:
    """On hand, reserved, available, ordered, on order (sales demand) and total available."""
    on_hand = 0 if r % 10 == 0 else (r >> 4) % 301
    reserved = min(on_hand, (r >> 14) % 8)
    available = on_hand - reserved
    ordered = 0 if (r >> 18) % 4 else 10 * (1 + (r >> 21) % 20)
    on_order = min(available, (r >> 26) % 6)
    total = available - on_order + ordered
    return (
        _INT[on_hand],
        _INT[reserved],
        _INT[available],
        _INT[ordered],
        _INT[on_order],
        _INT[total],
    )


# Rows draw from a fixed set of quantity profiles: far cheaper than arithmetic per row.
_STOCK_BITS = 12
_STOCK = tuple(_stock_profile(_mix(j)) for j in range(1 << _STOCK_BITS))


def _onhand(cat: _Catalog, onhand_rows: int | None) -> Iterator[Row]:
    bits = cat.rng("WarehousesOnHandV2").getrandbits
    if onhand_rows is None:
        for c in COMPANIES:
            for i in range(cat.products):
                p = cat.product(i)
                name, suffixes = p.text.name, p.shape.suffixes
                for k, dims in enumerate(p.shape.skus):
                    for w_index, w in enumerate(c.warehouses):
                        r = bits(_STOCK_BITS + 2)
                        # Like D365, a SKU has on-hand rows only where it was ever stocked.
                        if w_index and r & 3:
                            continue
                        yield _stock(c, p.item, name + suffixes[k], dims, w, _STOCK[r >> 2])
        return
    remaining = onhand_rows
    # Rounds after the first synthesise item numbers, so any row count keeps keys unique; the
    # companies take turns per SKU so that a budget below one round still covers both.
    for round_ in count():
        for i in range(cat.products):
            p = cat.product(i)
            item = p.item if round_ == 0 else f"{p.item}-{round_}"
            name, suffixes = p.text.name, p.shape.suffixes
            for k, dims in enumerate(p.shape.skus):
                for c in COMPANIES:
                    for w in c.warehouses:
                        if remaining <= 0:
                            return
                        remaining -= 1
                        yield _stock(
                            c, item, name + suffixes[k], dims, w, _STOCK[bits(_STOCK_BITS)]
                        )


def _stock(c: _Company, item: str, name: str, dims: Dims, w: _Warehouse, q: _Stock) -> Row:
    return {
        "dataAreaId": c.id,
        "ItemNumber": item,
        "ProductName": name,
        "ProductColorId": dims[0],
        "ProductConfigurationId": dims[1],
        "ProductSizeId": dims[2],
        "ProductStyleId": dims[3],
        "ProductVersionId": "",
        "InventorySiteId": w.site,
        "InventoryWarehouseId": w.id,
        "OnHandQuantity": q[0],
        "ReservedOnHandQuantity": q[1],
        "AvailableOnHandQuantity": q[2],
        "OrderedQuantity": q[3],
        "ReservedOrderedQuantity": _INT[0],
        "AvailableOrderedQuantity": q[3],
        "OnOrderQuantity": q[4],
        "TotalAvailableQuantity": q[5],
        "AreWarehouseManagementProcessesUsed": "Yes" if w.wms else "No",
    }


def _customers(cat: _Catalog) -> Iterator[Row]:
    for ci in range(len(COMPANIES)):
        for k in range(1, cat.customers + 1):
            yield cat.customer(ci, k)


def _order_headers(cat: _Catalog) -> Iterator[Row]:
    for ci in range(len(COMPANIES)):
        for header, *_ in cat.orders(ci):
            yield header


def _order_lines(cat: _Catalog) -> Iterator[Row]:
    for ci in range(len(COMPANIES)):
        for _, lines, _, _ in cat.orders(ci):
            yield from lines


# Freight per delivery mode, in minor units of the company's currency.
_FREIGHT_CENTS = {"Truck": 4_900, "Parcel": 995, "Air": 2_450}


def _order_charges(cat: _Catalog) -> Iterator[Row]:
    """A freight charge on each open order shipped by parcel or air. Invoiced orders carry none,
    because the seeded invoice totals are the sum of their lines."""
    for ci, c in enumerate(COMPANIES):
        for header, *_ in cat.orders(ci):
            mode = str(header["DeliveryModeCode"])
            if header["SalesOrderStatus"] == "Invoiced" or mode == "Truck":
                continue
            yield {
                "dataAreaId": c.id,
                "SalesOrderNumber": header["SalesOrderNumber"],
                "ChargeLineNumber": _INT[1],
                "SalesChargeCode": "FREIGHT",
                "ChargeCategory": "Fixed",
                "FixedChargeAmount": _money(_FREIGHT_CENTS[mode]),
                "ChargePercentage": _ZERO2,
                "ExternalChargeAmount": _ZERO2,
                "ChargeAccountingCurrencyCode": c.currency,
                "ChargeDescription": f"Freight ({mode})",
                "SalesTaxGroupCode": "",
                "SalesTaxItemGroupCode": "",
                "WillInvoiceProcessingKeepCharge": "Yes",
                "IsIntercompanyCharge": "No",
            }


def _invoices(cat: _Catalog) -> Iterator[Row]:
    for ci, c in enumerate(COMPANIES):
        invoice = 0
        for header, _, gross, net in cat.orders(ci):
            if header["SalesOrderStatus"] != "Invoiced":
                continue
            invoice += 1
            created = header["OrderCreationDateTime"]
            assert isinstance(created, datetime)
            yield {
                "dataAreaId": c.id,
                "InvoiceNumber": f"CIV-{invoice:06d}",
                "InvoiceDate": _DAYS[(created - _DAYS[0]).days + 2],
                "SalesOrderNumber": header["SalesOrderNumber"],
                "InvoiceCustomerAccountNumber": header["InvoiceCustomerAccountNumber"],
                "CurrencyCode": c.currency,
                # Sales tax is not simulated, so the invoice total is the sum of line amounts.
                "TotalInvoiceAmount": _money(net),
                "TotalTaxAmount": _ZERO2,
                "TotalDiscountAmount": _money(gross - net),
                "PaymentTermsName": header["PaymentTermsName"],
            }


def generate(
    products: int, *, seed: int = 0, onhand_rows: int | None = None
) -> Iterator[tuple[EntitySet, Iterator[Row]]]:
    """Yield every entity set of `entities.ENTITY_SETS` with a lazy iterator of its rows.

    Each iterator is independent and can be read alone, partly or in any order. Rows carry every
    field of their set, typed as d365sim serves them. `onhand_rows` replaces the natural on-hand
    data by exactly that many rows with unique keys, for benchmarks.
    """
    if onhand_rows is not None and onhand_rows < 0:
        raise ValueError("onhand_rows must not be negative")
    if onhand_rows and products <= 0:
        raise ValueError("onhand_rows needs at least one product")
    cat = _Catalog(products, seed)
    builders: dict[str, Callable[[_Catalog], Iterator[Row]]] = {
        "LegalEntities": _legal_entities,
        "Warehouses": _warehouses,
        "CustomerGroups": _customer_groups,
        "ReleasedProductsV2": _released_products,
        "ReleasedProductVariantsV2": _released_variants,
        "ProductTranslations": _translations,
        "SalesPriceAgreements": _price_agreements,
        "WarehousesOnHandV2": lambda cat: _onhand(cat, onhand_rows),
        "CustomersV3": _customers,
        "SalesOrderHeadersV2": _order_headers,
        "SalesOrderLines": _order_lines,
        "SalesOrderHeaderChargesV2": _order_charges,
        "SalesInvoiceHeadersV2": _invoices,
    }
    # A set added to entities.py without seed data here is served empty.
    return ((e, builders[e.name](cat) if e.name in builders else iter(())) for e in ENTITY_SETS)


def summary(products: int, *, seed: int = 0, onhand_rows: int | None = None) -> dict[str, int]:
    """Row count per entity set. It generates the rows (counts depend on each product's variant
    matrix), so it costs as much CPU as `generate` but holds no rows."""
    return {
        entity.name: sum(1 for _ in rows)
        for entity, rows in generate(products, seed=seed, onhand_rows=onhand_rows)
    }
