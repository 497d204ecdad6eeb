"""Plain decisions of the inventory and sharding stages."""

import pytest

from config.settings import Settings
from domain.routing import carrier_for, lane_for
from domain.stock import StockFeedError, parse_stock_feed
from tasks.inventory import choose_warehouse

WAREHOUSES = {"EU-DE": "DE", "US-EAST": "US"}


def test_prefers_a_warehouse_in_the_destination_country() -> None:
    avail = {("A", "EU-DE"): 5, ("A", "US-EAST"): 5}
    assert choose_warehouse([("A", 1)], avail, WAREHOUSES, "US") == "US-EAST"
    assert choose_warehouse([("A", 1)], avail, WAREHOUSES, "DE") == "EU-DE"


def test_all_lines_from_one_warehouse_or_none() -> None:
    avail = {("A", "EU-DE"): 5, ("B", "US-EAST"): 5}
    assert choose_warehouse([("A", 1), ("B", 1)], avail, WAREHOUSES, "US") is None


def test_repeated_sku_lines_add_up() -> None:
    avail = {("A", "US-EAST"): 3}
    assert choose_warehouse([("A", 2), ("A", 2)], avail, WAREHOUSES, "US") is None
    assert choose_warehouse([("A", 2), ("A", 1)], avail, WAREHOUSES, "US") == "US-EAST"


def test_lanes_from_order_features() -> None:
    assert lane_for({"lines": [{"properties": {"Engraving": "A&M"}}]}) == "custom"
    assert lane_for({"customer": {"tags": ["VIP"]}, "lines": []}) == "vip"
    assert lane_for({"tags": ["gift"], "lines": [{"properties": {}}]}) == "standard"


def test_carrier_by_border() -> None:
    assert carrier_for("US", "US") == ("sbx-post", "ground")
    assert carrier_for("US", "DE") == ("sbx-air", "express")


def test_stock_feed_csv_and_json() -> None:
    csv_text = "sku,warehouse,on_hand,country\nA,US-EAST,10,US\nB,US-EAST,0,\n"
    assert [(s.sku, s.on_hand) for s in parse_stock_feed(csv_text)] == [("A", 10), ("B", 0)]
    js = '[{"sku": "A", "warehouse": "W", "on_hand": 3}]'
    assert parse_stock_feed(js)[0].on_hand == 3
    with pytest.raises(StockFeedError, match="row 1"):
        parse_stock_feed("sku,warehouse,on_hand\nA,W,-1\n")


def test_settings_refuse_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="broker_url"):
        Settings(broker_url="memory://")
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(visibility_timeout_s=100, task_time_limit_s=200)
    assert Settings(database_url="postgresql://u@h/db").database_url.startswith(
        "postgresql+psycopg://")
