from d365sim.entities import BY_NAME, ENTITY_SETS, by_label


def test_every_key_is_a_field_and_names_are_unique() -> None:
    assert len(BY_NAME) == len(ENTITY_SETS)
    for entity in ENTITY_SETS:
        assert set(entity.keys) <= set(entity.field_names), entity.name
        assert len(set(entity.field_names)) == len(entity.fields), entity.name
        assert entity.company_scoped == ("dataAreaId" in entity.field_names), entity.name


def test_labels_resolve_case_insensitively() -> None:
    assert by_label("customers v3") is BY_NAME["CustomersV3"]
    assert by_label(" Sales order lines V2 ") is BY_NAME["SalesOrderLines"]
    assert by_label("Fixed asset major type") is None


def test_sales_order_lines_import_by_order_and_line_number() -> None:
    lines = BY_NAME["SalesOrderLines"]
    assert lines.keys == ("dataAreaId", "InventoryLotId")
    assert lines.row_keys == ("dataAreaId", "SalesOrderNumber", "LineNumber")
