"""Catalog mapping: drafts, names, slugs, the deterministic variant split and content hashes."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d365ct.config import CatalogSettings
from d365ct.mapping.catalog import (
    ITEM_ATTRIBUTE,
    VARIANT_ATTRIBUTE,
    CatalogMappingError,
    CatalogOptions,
    Variant,
    content_hash,
    parse_content_hash,
    product_plans,
    product_type_attributes,
    slugify,
    translations_by_product,
    variant_of,
)
from d365ct.mapping.skus import variant_sku

OPTIONS = CatalogOptions()
SLUG = re.compile(r"^[a-z0-9-]{2,256}$")


def product(
    item: str = "D0001", name: str = "Contoso Trail Jacket", **extra: Any
) -> dict[str, Any]:
    return {"ItemNumber": item, "ProductNumber": item, "ProductName": name, **extra}


def variant(
    item: str, color: str = "", size: str = "", style: str = "", config: str = ""
) -> Variant:
    return variant_of(
        {
            "ItemNumber": item,
            "ProductColorId": color,
            "ProductSizeId": size,
            "ProductStyleId": style,
            "ProductConfigurationId": config,
            "ProductVariantNumber": f"{item}-{color}{size}{style}{config}",
        }
    )


def attributes(draft_variant: dict[str, Any]) -> dict[str, str]:
    return {a["name"]: a["value"] for a in draft_variant["attributes"]}


def test_a_plain_product_is_one_product_with_its_item_number_as_key_and_sku() -> None:
    [plan] = product_plans(product(), [], {"de": "Contoso Wanderjacke"}, OPTIONS)
    draft = plan.draft
    assert plan.key == draft["key"] == "D0001" and plan.parts == 1
    assert draft["masterVariant"]["sku"] == "D0001" and draft["variants"] == []
    assert attributes(draft["masterVariant"]) == {ITEM_ATTRIBUTE: "D0001"}
    assert draft["productType"] == {"typeId": "product-type", "key": "d365-product"}
    assert draft["name"] == {"en": "Contoso Trail Jacket", "de": "Contoso Wanderjacke"}
    assert draft["slug"] == {"en": "contoso-trail-jacket-d0001", "de": "contoso-wanderjacke-d0001"}
    assert draft["publish"] is True


def test_variants_get_the_shared_sku_rule_and_dimension_attributes() -> None:
    variants = [
        variant("D0005", "Red", "M"),
        variant("D0005", "Black", "L"),
        variant("D0005", "", "", "", "Pro"),
    ]
    [plan] = product_plans(product("D0005", ProductSubType="ProductMaster"), variants, {}, OPTIONS)
    skus = plan.skus
    assert skus == sorted(skus) == ["D0005-Black-L", "D0005-Pro", "D0005-Red-M"]
    assert skus[0] == variant_sku("D0005", "Black", "L")
    master = attributes(plan.draft["masterVariant"])
    assert master == {
        ITEM_ATTRIBUTE: "D0005",
        "color": "Black",
        "size": "L",
        VARIANT_ATTRIBUTE: "D0005-BlackL",
    }
    assert attributes(plan.draft["variants"][0])["configuration"] == "Pro"


def test_product_name_wins_for_the_default_locale_and_translations_fill_the_rest() -> None:
    names = {"en": "English translation", "de": "Deutsch"}
    [plan] = product_plans(product(name="Released name"), [], names, OPTIONS)
    assert plan.draft["name"] == {"en": "Released name", "de": "Deutsch"}
    [plan] = product_plans(product(name=""), [], names, OPTIONS)
    assert plan.draft["name"] == {"en": "English translation", "de": "Deutsch"}
    [plan] = product_plans(product(name=""), [], {}, OPTIONS)
    assert plan.draft["name"] == {"en": "D0001"}  # commercetools requires a name


def test_translations_follow_the_configured_language_map() -> None:
    options = CatalogOptions.from_settings(
        CatalogSettings(languages={"en-us": "en-US", "de": "de-DE", "fr": "fr"})
    )
    rows = [
        {"ProductNumber": "D0001", "LanguageId": "en-us", "ProductName": "Jacket"},
        {"ProductNumber": "D0001", "LanguageId": "DE", "ProductName": "Jacke"},
        {"ProductNumber": "D0001", "LanguageId": "nl", "ProductName": "Jas"},  # not configured
        {"ProductNumber": "D0002", "LanguageId": "fr", "ProductName": ""},  # empty: ignored
    ]
    assert translations_by_product(rows, options) == {
        "D0001": {"en-US": "Jacket", "de-DE": "Jacke"}
    }
    assert options.default_locale == "en-US"


def test_slugs_are_ascii_lowercase_and_unique_by_item() -> None:
    assert slugify("Größe: Küsten-Kapuzenpulli  (XL)") == "groesse-kuesten-kapuzenpulli-xl"
    assert slugify("Café Crème") == "cafe-creme"
    assert slugify("!!!") == ""
    [a] = product_plans(product("A/1", "Same Name"), [], {}, OPTIONS)
    [b] = product_plans(product("A/2", "Same Name"), [], {}, OPTIONS)
    assert a.draft["slug"]["en"] == "same-name-a-1" != b.draft["slug"]["en"]
    [odd] = product_plans(product("X", "€"), [], {}, OPTIONS)
    assert SLUG.match(odd.draft["slug"]["en"])
    [long] = product_plans(product("D9", "word " * 200), [], {}, OPTIONS)
    assert SLUG.match(long.draft["slug"]["en"]) and long.draft["slug"]["en"].endswith("-d9")


def test_a_master_over_the_limit_is_split_into_suffixed_products() -> None:
    options = CatalogOptions(variant_limit=5)
    colours = ["Black", "Blue", "Red"]
    sizes = ["S", "M", "L", "XL"]
    variants = [variant("D0010", c, s) for c in colours for s in sizes]  # 12 variants
    plans = product_plans(product("D0010"), variants, {"de": "Jacke"}, options)
    assert [p.key for p in plans] == ["D0010", "D0010-2", "D0010-3"]
    assert [len(p.skus) for p in plans] == [5, 5, 2]
    assert {p.parts for p in plans} == {3} and [p.part for p in plans] == [1, 2, 3]
    all_skus = [sku for p in plans for sku in p.skus]
    assert all_skus == sorted(v.sku for v in variants)
    assert [p.draft["slug"]["de"] for p in plans] == [
        "jacke-d0010",
        "jacke-d0010-2",
        "jacke-d0010-3",
    ]
    assert len({p.draft["name"]["en"] for p in plans}) == 1  # the same product to a shopper


def test_a_master_without_released_variants_yields_nothing_and_duplicates_are_refused() -> None:
    assert product_plans(product("D0015", ProductSubType="ProductMaster"), [], {}, OPTIONS) == []
    with pytest.raises(CatalogMappingError, match="share the SKU"):
        product_plans(
            product("D0020"), [variant("D0020", "Red"), variant("D0020", " Red ")], {}, OPTIONS
        )
    with pytest.raises(CatalogMappingError, match="without ItemNumber"):
        product_plans({"ProductName": "x"}, [], {}, OPTIONS)


def test_content_hash_is_stable_and_carries_the_part_count() -> None:
    [plan] = product_plans(product(), [], {}, OPTIONS)
    digest, parts = parse_content_hash(plan.content_hash)
    assert parts == 1 and len(digest) == 64
    assert content_hash(dict(reversed(list(plan.draft.items())))) == plan.content_hash
    assert content_hash(plan.draft, 2) != plan.content_hash
    [renamed] = product_plans(product(name="Other"), [], {}, OPTIONS)
    assert renamed.content_hash != plan.content_hash
    [unpublished] = product_plans(product(), [], {}, CatalogOptions(publish=False))
    assert unpublished.content_hash != plan.content_hash
    assert parse_content_hash("abc") == ("abc", 1)


def test_product_type_attributes_are_text_and_cover_every_draft_attribute() -> None:
    defined = {a["name"]: a for a in product_type_attributes()}
    assert set(defined) == {
        "color",
        "size",
        "style",
        "configuration",
        ITEM_ATTRIBUTE,
        VARIANT_ATTRIBUTE,
    }
    assert {a["type"]["name"] for a in defined.values()} == {"text"}
    plans = product_plans(product("D1"), [variant("D1", "Red", "S", "Slim", "Pro")], {}, OPTIONS)
    used = {
        a["name"]
        for p in plans
        for v in [p.draft["masterVariant"], *p.draft["variants"]]
        for a in v["attributes"]
    }
    assert used <= set(defined)


# ---- properties of the split ------------------------------------------------------------------

# Values differ between dimensions: the SKU rule joins them, so "Red" as colour and as size
# would be one SKU (a mapping error, tested above).
variant_sets = st.lists(
    st.tuples(
        st.sampled_from(["", "Red", "Blue", "Black", "Green"]),
        st.sampled_from(["", "S", "M", "L", "XL", "40", "42"]),
        st.sampled_from(["", "Slim", "Sport"]),
        st.sampled_from(["", "Pro"]),
    ),
    min_size=1,
    max_size=60,
    unique=True,
).filter(lambda dims: all(any(d) for d in dims))


def _variants(dims: list[tuple[str, str, str, str]]) -> list[Variant]:
    return [variant("M1", *d) for d in dims]


@settings(max_examples=200, deadline=None)
@given(dims=variant_sets, limit=st.integers(min_value=1, max_value=12), seed=st.integers(0, 10**6))
def test_split_is_a_function_of_the_variant_set(
    dims: list[tuple[str, str, str, str]], limit: int, seed: int
) -> None:
    options = CatalogOptions(variant_limit=limit)
    variants = _variants(dims)
    shuffled = variants[:]
    random.Random(seed).shuffle(shuffled)
    first = product_plans(product("M1"), variants, {}, options)
    again = product_plans(product("M1"), shuffled, {}, options)  # D365 returns rows in any order
    assert [(p.key, p.content_hash, p.draft) for p in first] == [
        (p.key, p.content_hash, p.draft) for p in again
    ]
    skus = [sku for p in first for sku in p.skus]
    assert sorted(skus) == sorted(v.sku for v in variants) and len(set(skus)) == len(skus)
    assert all(1 <= len(p.skus) <= limit for p in first)
    assert len(first) == -(-len(variants) // limit)
    assert [p.key for p in first] == ["M1"] + [f"M1-{n}" for n in range(2, len(first) + 1)]
    slugs = [p.draft["slug"]["en"] for p in first]
    assert len(set(slugs)) == len(slugs) and all(SLUG.match(s) for s in slugs)


@settings(max_examples=100, deadline=None)
@given(dims=variant_sets, limit=st.integers(min_value=1, max_value=12))
def test_adding_a_variant_past_the_last_sku_changes_only_the_last_part(
    dims: list[tuple[str, str, str, str]], limit: int
) -> None:
    options = CatalogOptions(variant_limit=limit)
    before = product_plans(product("M1"), _variants(dims), {}, options)
    after = product_plans(product("M1"), [*_variants(dims), variant("M1", "Zz")], {}, options)
    if len(after) == len(before):  # the part count is in every hash: only then can parts agree
        assert [p.content_hash for p in after[:-1]] == [p.content_hash for p in before[:-1]]
        assert after[-1].content_hash != before[-1].content_hash
    else:
        assert len(after) == len(before) + 1 and after[-1].skus == ["M1-Zz"]
