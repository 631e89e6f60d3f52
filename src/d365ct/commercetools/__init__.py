"""The commercetools adapter: tokens, the HTTP client with retries and 409 handling, and the
pure update-action builders that keep writes to what actually changed.
"""

from d365ct.commercetools.actions import (
    fraction_digits,
    inventory_actions,
    money,
    money_from_cents,
    money_value,
    product_actions,
    same_money,
    standalone_price_actions,
)
from d365ct.commercetools.auth import ClientCredentialsTokens
from d365ct.commercetools.client import (
    UNKNOWN,
    CachedVersion,
    CommercetoolsClient,
    CommercetoolsError,
    ConcurrentModification,
    ResourceNotFound,
    RetryPolicy,
    Upserted,
    VersionCache,
    field_predicate,
    quote_predicate_string,
)
from d365ct.tokens import TokenProvider

__all__ = [
    "UNKNOWN",
    "CachedVersion",
    "ClientCredentialsTokens",
    "CommercetoolsClient",
    "CommercetoolsError",
    "ConcurrentModification",
    "ResourceNotFound",
    "RetryPolicy",
    "TokenProvider",
    "Upserted",
    "VersionCache",
    "field_predicate",
    "fraction_digits",
    "inventory_actions",
    "money",
    "money_from_cents",
    "money_value",
    "product_actions",
    "quote_predicate_string",
    "same_money",
    "standalone_price_actions",
]
