"""Data projects (DMF definition groups): the pre-defined export projects and those imports create.

More export projects come from a TOML file: `[[project]] name = "…", entities = ["CustomersV3"]`.
"""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from d365sim.entities import BY_NAME, by_label


@dataclass(frozen=True)
class DataProject:
    name: str
    operation: str  # "Export" or "Import"
    entities: tuple[str, ...]  # entity set names, in sequence order
    description: str = ""


PREDEFINED: tuple[DataProject, ...] = (
    DataProject(
        "d365ct-products",
        "Export",
        ("ReleasedProductsV2", "ReleasedProductVariantsV2", "ProductTranslations"),
        "Released products, variants and translations for the commercetools catalog",
    ),
    DataProject("d365ct-prices", "Export", ("SalesPriceAgreements",), "Sales price agreements"),
    DataProject("d365ct-onhand", "Export", ("WarehousesOnHandV2",), "On-hand by warehouse"),
    DataProject("d365ct-customers", "Export", ("CustomersV3",), "Customers V3"),
)


def load_projects_file(path: Path) -> list[DataProject]:
    """Read extra projects; entities may be named by OData set name or DMF label."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    projects = []
    for index, item in enumerate(data.get("project", [])):
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: project[{index}].name is missing")
        names = []
        for entity_name in item.get("entities", []):
            entity = BY_NAME.get(entity_name) or by_label(entity_name)
            if entity is None:
                raise ValueError(f"{path}: project '{name}' names unknown entity '{entity_name}'")
            names.append(entity.name)
        if not names:
            raise ValueError(f"{path}: project '{name}' has no entities")
        operation = str(item.get("operation", "Export")).capitalize()
        if operation not in ("Export", "Import"):
            raise ValueError(f"{path}: project '{name}' operation must be Export or Import")
        projects.append(DataProject(name, operation, tuple(names), item.get("description", "")))
    return projects


class ProjectRegistry:
    """Data projects by name; names compare case-insensitively like D365's."""

    def __init__(self, extra: list[DataProject] | None = None) -> None:
        self._lock = threading.Lock()
        self._initial = [*PREDEFINED, *(extra or [])]
        self._projects: dict[str, DataProject] = {}
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._projects = {p.name.casefold(): p for p in self._initial}

    def get(self, name: str) -> DataProject | None:
        with self._lock:
            return self._projects.get(name.casefold())

    def put(self, project: DataProject) -> None:
        with self._lock:
            self._projects[project.name.casefold()] = project

    def all(self) -> list[DataProject]:
        with self._lock:
            return list(self._projects.values())
