"""D365 released products, variants and translations → commercetools product drafts (SPEC M1–M3).

Pure: no I/O, no clock. Each draft has a content hash; masters over the variant limit split (C10).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from d365ct.config import CatalogSettings, FieldSource
from d365ct.mapping.skus import variant_sku

# (the default draft, the D365 source row) → the draft to use; see d365ct.hooks
ProductHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]

__all__ = [
    "DIMENSION_ATTRIBUTES",
    "ITEM_ATTRIBUTE",
    "PRODUCT_FIELDS",
    "TRANSLATION_FIELDS",
    "VARIANT_ATTRIBUTE",
    "VARIANT_FIELDS",
    "CatalogMappingError",
    "CatalogOptions",
    "ProductHook",
    "ProductPlan",
    "Variant",
    "content_hash",
    "parse_content_hash",
    "part_key",
    "product_plans",
    "product_type_attributes",
    "product_type_draft",
    "slugify",
    "source_value",
    "translations_by_product",
    "variant_of",
]

# (D365 field, commercetools attribute): the product dimensions, as text attributes (M3).
DIMENSION_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("ProductColorId", "color"),
    ("ProductSizeId", "size"),
    ("ProductStyleId", "style"),
    ("ProductConfigurationId", "configuration"),
)
ITEM_ATTRIBUTE = "d365-item-number"  # every variant: the D365 ItemNumber it belongs to
VARIANT_ATTRIBUTE = "d365-variant-number"  # variants of product masters: ProductVariantNumber

# $select lists: only what the mapping reads travels over the wire.
PRODUCT_FIELDS = ("ItemNumber", "ProductNumber", "ProductName", "ProductSubType")
VARIANT_FIELDS = (
    "ItemNumber",
    "ProductVariantNumber",
    *(field for field, _ in DIMENSION_ATTRIBUTES),
)
TRANSLATION_FIELDS = ("ProductNumber", "LanguageId", "ProductName")

_ATTRIBUTE_LABELS = {
    "color": {"en": "Colour", "de": "Farbe"},
    "size": {"en": "Size", "de": "Größe"},
    "style": {"en": "Style", "de": "Stil"},
    "configuration": {"en": "Configuration", "de": "Konfiguration"},
    ITEM_ATTRIBUTE: {"en": "D365 item number", "de": "D365-Artikelnummer"},
    VARIANT_ATTRIBUTE: {"en": "D365 variant number", "de": "D365-Variantennummer"},
}
SLUG_MAX = 256  # commercetools: slug matches [a-zA-Z0-9_-]{2,256}
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Letters NFKD does not decompose into ASCII; German ones transliterated the German way.
_TRANSLITERATE = str.maketrans(
    {"ß": "ss", "ä": "ae", "ö": "oe", "ü": "ue", "æ": "ae", "ø": "o", "œ": "oe", "đ": "d", "ł": "l"}
)


class CatalogMappingError(ValueError):
    """A released product that cannot become a commercetools product; the text says why."""


@dataclass(frozen=True)
class CatalogOptions:
    """The catalog settings the mapping needs; `languages` maps D365 LanguageId → locale, and its
    first locale is the default one (the locale of ReleasedProductsV2.ProductName)."""

    product_type: str = "d365-product"
    variant_limit: int = 100
    publish: bool = True
    languages: tuple[tuple[str, str], ...] = (("en-us", "en"), ("de", "de"))
    # overrides ([catalog.mapping]): applied to the default draft, declarative first, then hook
    name_field: str | None = None
    slug_field: str | None = None
    attributes: tuple[tuple[str, FieldSource], ...] = ()
    extra_fields: tuple[str, ...] = ()
    hook: ProductHook | None = None
    hook_name: str = ""  # how error texts name the hook: its package.module:function
    hook_attributes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.variant_limit < 1:
            raise ValueError("variant_limit must be at least 1")
        if not self.languages:
            raise ValueError("languages must map at least one D365 language to a locale")

    @classmethod
    def from_settings(
        cls, settings: CatalogSettings, hook: ProductHook | None = None
    ) -> CatalogOptions:
        """The options of the settings; `hook` is the loaded catalog.mapping.hook (load_hook)."""
        mapping = settings.mapping
        return cls(
            product_type=settings.product_type,
            variant_limit=settings.variant_limit,
            publish=settings.publish,
            languages=tuple((lang.lower(), locale) for lang, locale in settings.languages.items()),
            name_field=mapping.name_field,
            slug_field=mapping.slug_field,
            attributes=tuple(
                (name, FieldSource(field=source) if isinstance(source, str) else source)
                for name, source in mapping.attributes.items()
            ),
            extra_fields=mapping.fields,
            hook=hook,
            hook_name=mapping.hook or "",
            hook_attributes=mapping.hook_attributes,
        )

    @property
    def product_fields(self) -> tuple[str, ...]:
        """The ReleasedProductsV2 fields to read ($select): the defaults and what overrides use."""
        wanted = [*PRODUCT_FIELDS, self.name_field, self.slug_field]
        wanted += [source.field for _, source in self.attributes]
        wanted += self.extra_fields
        return tuple(dict.fromkeys(f for f in wanted if f))

    @property
    def custom_attributes(self) -> tuple[str, ...]:
        """Attribute names the overrides and the hook add: the product type must define them."""
        names = [name for name, _ in self.attributes] + list(self.hook_attributes)
        return tuple(n for n in dict.fromkeys(names) if n not in _ATTRIBUTE_LABELS)

    @property
    def default_locale(self) -> str:
        return self.languages[0][1]

    @property
    def locale_of(self) -> dict[str, str]:
        return dict(self.languages)


@dataclass(frozen=True)
class Variant:
    """One released product variant, reduced to what a product draft needs."""

    sku: str
    dimensions: tuple[str, str, str, str]  # colour, size, style, configuration ("" when unset)
    variant_number: str = ""


@dataclass(frozen=True)
class ProductPlan:
    """One desired commercetools product: the draft, and the hash that says whether it changed.

    A product master over the variant limit becomes `parts` products of one `group` (the item).
    """

    key: str
    group: str
    part: int
    parts: int
    draft: dict[str, Any]
    content_hash: str

    @property
    def skus(self) -> list[str]:
        return [self.draft["masterVariant"]["sku"], *(v["sku"] for v in self.draft["variants"])]


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def variant_of(row: Mapping[str, Any]) -> Variant:
    """A ReleasedProductVariantsV2 row → Variant, its SKU by the shared rule (mapping.skus)."""
    dims = tuple(_text(row.get(field)) for field, _ in DIMENSION_ATTRIBUTES)
    color, size, style, config = dims
    return Variant(
        sku=variant_sku(_text(row.get("ItemNumber")), color, size, style, config),
        dimensions=(color, size, style, config),
        variant_number=_text(row.get("ProductVariantNumber")),
    )


def translations_by_product(
    rows: Iterable[Mapping[str, Any]], options: CatalogOptions
) -> dict[str, dict[str, str]]:
    """ProductTranslations rows → ProductNumber → {locale: name}, for configured languages only."""
    locale_of = options.locale_of
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        locale = locale_of.get(_text(row.get("LanguageId")).lower())
        name = _text(row.get("ProductName"))
        if locale is None or not name:
            continue
        found.setdefault(_text(row.get("ProductNumber")), {})[locale] = name
    return found


def slugify(text: str) -> str:
    """Lower-case ASCII letters, digits and single hyphens: 'Größe Jacke' → 'groesse-jacke'."""
    folded = unicodedata.normalize("NFKD", text.lower().translate(_TRANSLITERATE))
    ascii_text = folded.encode("ascii", "ignore").decode("ascii")
    return _NOT_SLUG.sub("-", ascii_text).strip("-")


def part_key(item: str, part: int) -> str:
    """The product key of part `part` (1-based) of a split master: item, item-2, item-3, …"""
    return item if part == 1 else f"{item}-{part}"


def _slug(name: str, item: str, part: int) -> str:
    # The item number makes the slug unique per product; the name part is cut to fit the limit.
    tail = slugify(item) or "item"
    if part > 1:
        tail = f"{tail}-{part}"
    head = slugify(name)[: max(0, SLUG_MAX - len(tail) - 1)].rstrip("-")
    slug = f"{head}-{tail}" if head else tail
    return slug if len(slug) >= 2 else f"p-{slug}"


def _attributes(
    item: str, variant: Variant | None, overrides: Mapping[str, str | None]
) -> list[dict[str, str]]:
    values: dict[str, str | None] = {ITEM_ATTRIBUTE: item}
    if variant is not None:
        for (_, name), value in zip(DIMENSION_ATTRIBUTES, variant.dimensions, strict=True):
            if value:
                values[name] = value
        if variant.variant_number:
            values[VARIANT_ATTRIBUTE] = variant.variant_number
    values.update(overrides)  # a configured attribute replaces a default one of that name
    return [{"name": name, "value": value} for name, value in values.items() if value]


def source_value(row: Mapping[str, Any], source: FieldSource) -> str | None:
    """The value a declarative override takes from a D365 row: a constant, or the field's text
    (looked up in `lookup` when listed there, `default` when empty, None: left out)."""
    if source.value is not None:
        return source.value
    assert source.field is not None  # FieldSource holds exactly one of field and value
    text = _text(row.get(source.field))
    if not text:
        return source.default
    return source.lookup.get(text, text)


def _hooked(
    draft: dict[str, Any], product: Mapping[str, Any], options: CatalogOptions
) -> dict[str, Any]:
    """The draft after the catalog hook, checked: a hook may change what the product says,
    not which product it is (key) or which SKUs it holds (the split depends on them)."""
    if options.hook is None:
        return draft
    key = draft["key"]
    skus = [draft["masterVariant"]["sku"], *(v["sku"] for v in draft["variants"])]
    try:
        changed = options.hook(json.loads(json.dumps(draft)), dict(product))
    except Exception as exc:  # any failure of user code fails this record, not the run
        raise CatalogMappingError(
            f"mapping hook {options.hook_name} failed for product {key}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(changed, dict):
        raise CatalogMappingError(
            f"mapping hook {options.hook_name} returned {type(changed).__name__} for product "
            f"{key}, not a product draft (dict)"
        )
    try:
        held = [changed["masterVariant"]["sku"], *(v["sku"] for v in changed.get("variants", []))]
    except (KeyError, TypeError) as exc:
        raise CatalogMappingError(
            f"mapping hook {options.hook_name} returned a draft for product {key} without "
            f"masterVariant/variants skus ({exc!r})"
        ) from exc
    if changed.get("key") != key or held != skus:
        raise CatalogMappingError(
            f"mapping hook {options.hook_name} changed the key or the SKUs of product {key}; "
            "d365ct manages both (the variant split depends on them)"
        )
    if not isinstance(changed.get("name"), dict) or not changed["name"]:
        raise CatalogMappingError(
            f"mapping hook {options.hook_name} left product {key} without a name"
        )
    return changed


def _names(
    product: Mapping[str, Any],
    translations: Mapping[str, str],
    options: CatalogOptions,
) -> dict[str, str]:
    # ProductName of the released product is the name in the system language, so it wins for
    # the default locale (an edit there must reach commercetools); translations fill the rest.
    names: dict[str, str] = {}
    default = options.default_locale
    product_name = _text(product.get(options.name_field or "ProductName"))
    for _, locale in options.languages:
        if locale in names:
            continue
        if locale == default and product_name:
            names[locale] = product_name
        elif translations.get(locale):
            names[locale] = translations[locale]
    if default not in names:
        # commercetools requires a name: the item number beats an empty product
        names[default] = product_name or _text(product.get("ItemNumber"))
    return {locale: names[locale] for locale in sorted(names)}


def content_hash(draft: Mapping[str, Any], parts: int = 1) -> str:
    """sha256 of the draft's canonical JSON, with the number of parts of its group appended.

    The part count is part of the hash, so a split that gains or loses a part re-syncs the whole
    group (and the stored hash of part 1 tells how many parts the last sync made).
    """
    canonical = json.dumps(draft, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}/{parts}"


def parse_content_hash(value: str) -> tuple[str, int]:
    """(digest, parts) of a stored content hash; parts is 1 for a hash without the suffix."""
    digest, _, parts = value.partition("/")
    return digest, int(parts) if parts.isdigit() else 1


def product_plans(
    product: Mapping[str, Any],
    variants: Sequence[Variant],
    translations: Mapping[str, str],
    options: CatalogOptions,
) -> list[ProductPlan]:
    """The commercetools products for one released product (M1–M3).

    A plain product is one product with sku = ItemNumber. A product master's variants are sorted
    by sku and cut into chunks of `variant_limit` (C10): products `item`, `item-2`, … with the same
    name and suffixed slugs. Sorting makes the split a function of the variant set alone, so it is
    the same on every run. A master without released variants yields no product (nothing to sell).
    """
    item = _text(product.get("ItemNumber"))
    if not item:
        raise CatalogMappingError("released product without ItemNumber")
    names = _names(product, translations, options)
    slug_text = _text(product.get(options.slug_field)) if options.slug_field else ""
    overrides = {name: source_value(product, source) for name, source in options.attributes}
    is_master = bool(variants) or _text(product.get("ProductSubType")) == "ProductMaster"
    if not is_master:
        chunks: list[list[Variant | None]] = [[None]]
    elif not variants:
        return []
    else:
        ordered = sorted(variants, key=lambda v: v.sku)
        duplicates = sorted({a.sku for a, b in itertools.pairwise(ordered) if a.sku == b.sku})
        if duplicates:
            raise CatalogMappingError(
                f"product master {item}: variants share the SKU(s) {', '.join(duplicates)}; "
                "the SKU rule joins dimension values, which coincide here (blanks, or one value "
                "in two dimensions)"
            )
        limit = options.variant_limit
        chunks = [list(ordered[i : i + limit]) for i in range(0, len(ordered), limit)]
    parts = len(chunks)
    plans = []
    for index, chunk in enumerate(chunks, start=1):
        drafted = [
            {
                "sku": variant.sku if variant is not None else variant_sku(item),
                "attributes": _attributes(item, variant, overrides),
            }
            for variant in chunk
        ]
        key = part_key(item, index)
        draft: dict[str, Any] = {
            "key": key,
            "productType": {"typeId": "product-type", "key": options.product_type},
            "name": names,
            "slug": {
                locale: _slug(slug_text or name, item, index) for locale, name in names.items()
            },
            "masterVariant": drafted[0],
            "variants": drafted[1:],
            "publish": options.publish,
        }
        draft = _hooked(draft, product, options)
        plans.append(ProductPlan(key, item, index, parts, draft, content_hash(draft, parts)))
    return plans


def product_type_attributes(extra: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Attribute definitions of the product type: the dimensions and the D365 numbers, and the
    `extra` attributes the mapping overrides set, all as text."""
    names = [name for _, name in DIMENSION_ATTRIBUTES] + [ITEM_ATTRIBUTE, VARIANT_ATTRIBUTE]
    names += [name for name in extra if name not in names]
    return [
        {
            "name": name,
            "label": _ATTRIBUTE_LABELS.get(name, {"en": name}),
            "type": {"name": "text"},
            "isRequired": False,
            "attributeConstraint": "None",
            "isSearchable": True,
            "inputHint": "SingleLine",
        }
        for name in names
    ]


def product_type_draft(key: str, extra_attributes: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "key": key,
        "name": "D365 product",
        "description": "Released products of Dynamics 365 F&O, synced by d365ct",
        "attributes": product_type_attributes(extra_attributes),
    }
