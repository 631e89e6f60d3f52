"""Loading `package.module:function` mapping hooks: once, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from d365ct.config import load_settings
from d365ct.errors import ConfigurationError
from d365ct.hooks import CATALOG_HOOK_KEY, load_hook
from d365ct.mapping.examples import describe_with_search_name

MINIMAL = """
[d365]
base_url = "https://contoso.operations.dynamics.com"
client_id = "app"
"""


def test_a_hook_is_the_named_function() -> None:
    hook = load_hook("d365ct.mapping.examples:describe_with_search_name", CATALOG_HOOK_KEY)
    assert hook is describe_with_search_name
    assert load_hook(None, CATALOG_HOOK_KEY) is None


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("no_such_package.hooks:fn", "cannot import module 'no_such_package.hooks'"),
        ("tests.mapping.broken_hook_module:fn", "RuntimeError: this module is broken"),
        ("tests.mapping.hook_samples:missing", "has no 'missing'"),
        ("tests.mapping.hook_samples:NOT_A_FUNCTION", "is not callable"),
    ],
)
def test_a_hook_that_cannot_be_loaded_names_the_key(spec: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_hook(spec, "inventory.mapping.hook")
    assert str(refused.value).startswith(f"inventory.mapping.hook = '{spec}': ")
    assert problem in str(refused.value)


def test_start_up_refuses_a_configuration_whose_hook_cannot_be_loaded(tmp_path: Path) -> None:
    path = tmp_path / "d365ct.toml"
    path.write_text(MINIMAL + '[catalog.mapping]\nhook = "no_such_package:fn"\n')
    with pytest.raises(ConfigurationError, match=r"^catalog\.mapping\.hook = 'no_such_package"):
        load_settings(path, environ={})

    path.write_text(MINIMAL + '[inventory.mapping]\nhook = "not a function spec"\n')
    with pytest.raises(ConfigurationError, match=r"inventory\.mapping\.hook: .*module:function"):
        load_settings(path, environ={})

    path.write_text(
        MINIMAL
        + '[catalog.mapping]\nhook = "d365ct.mapping.examples:describe_with_search_name"\n'
        + '[catalog.mapping.attributes]\nbrand = { value = "Contoso", field = "SearchName" }\n'
    )
    with pytest.raises(ConfigurationError, match=r"catalog\.mapping\.attributes\.brand"):
        load_settings(path, environ={})


def test_a_valid_hook_loads_with_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "d365ct.toml"
    path.write_text(
        MINIMAL + '[inventory.mapping]\nhook = "d365ct.mapping.examples:hold_back_safety_stock"\n'
    )
    settings = load_settings(path, environ={})
    assert settings.inventory.mapping.hook == "d365ct.mapping.examples:hold_back_safety_stock"


def test_the_price_hook_loads_at_start_up_and_a_broken_one_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "d365ct.toml"
    path.write_text(MINIMAL + '[prices.mapping]\nhook = "d365ct.mapping.examples:charm_prices"\n')
    assert load_settings(path, environ={}).prices.mapping.hook == (
        "d365ct.mapping.examples:charm_prices"
    )
    path.write_text(MINIMAL + '[prices.mapping]\nhook = "d365ct.mapping.examples:nope"\n')
    with pytest.raises(ConfigurationError, match=r"^prices\.mapping\.hook = 'd365ct\.mapping"):
        load_settings(path, environ={})
