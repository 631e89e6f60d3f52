"""Mapping hooks named `package.module:function` in the configuration, imported at start-up.

A hook that cannot be imported is a ConfigurationError naming its configuration key.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from d365ct.errors import ConfigurationError

if TYPE_CHECKING:
    from d365ct.config import Settings

__all__ = [
    "CATALOG_HOOK_KEY",
    "INVENTORY_HOOK_KEY",
    "PRICES_HOOK_KEY",
    "MappingHook",
    "MappingHooks",
    "load_hook",
    "load_hooks",
]

# (the default draft, the D365 source it was mapped from) → the draft to use
MappingHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]]

CATALOG_HOOK_KEY = "catalog.mapping.hook"
INVENTORY_HOOK_KEY = "inventory.mapping.hook"
PRICES_HOOK_KEY = "prices.mapping.hook"


@dataclass(frozen=True)
class MappingHooks:
    catalog: MappingHook | None = None
    inventory: MappingHook | None = None
    prices: MappingHook | None = None


def load_hook(spec: str | None, key: str) -> MappingHook | None:
    """The function `spec` names ("package.module:function", or …:Class.method), or None.

    Imported once per process (Python keeps the module); every problem — no such module, an
    error while importing it, no such attribute, not callable — names the configuration key.
    """
    if spec is None:
        return None
    try:
        return _resolve(spec)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{key} = '{spec}': {exc}") from exc.__cause__


def load_hooks(settings: Settings) -> MappingHooks:
    """Every configured mapping hook, so a broken one stops the start, not the first record."""
    return MappingHooks(
        catalog=load_hook(settings.catalog.mapping.hook, CATALOG_HOOK_KEY),
        inventory=load_hook(settings.inventory.mapping.hook, INVENTORY_HOOK_KEY),
        prices=load_hook(settings.prices.mapping.hook, PRICES_HOOK_KEY),
    )


@functools.cache
def _resolve(spec: str) -> MappingHook:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a hook module's own import error is the user's to see
        raise ConfigurationError(
            f"cannot import module '{module_name}': {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigurationError(f"module '{module_name}' has no '{attribute}'") from exc
    if not callable(target):
        raise ConfigurationError(f"'{attribute}' in module '{module_name}' is not callable")
    return cast(MappingHook, target)
