"""Lanes, zones, warehouse plans, A/B arms and intervals: plain rules, no services."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from config.settings import LaneRules, Settings
from domain.picklist import bin_sort_key
from domain.route_learning import LEARNED, RULES, arm_for, mean_ci, wilson_ci
from domain.routing import lane_for, plan_warehouses, promise_hours
from domain.zones import nearest_first, zone_of

WAREHOUSES = {"US-EAST": "US", "EU-DE": "DE", "EU-FR": "FR"}


def test_an_express_shipping_method_puts_the_order_in_the_express_lane() -> None:
    assert lane_for({"shipping_method": "UPS Next Day Air", "lines": []}) == "express"
    assert lane_for({"tags": ["express"], "lines": []}) == "express"
    assert lane_for({"shipping_method": "Standard", "lines": []}) == "standard"


def test_custom_made_wins_over_express_and_vip() -> None:
    engraved = {"shipping_method": "Express", "customer": {"tags": ["VIP"]},
                "lines": [{"sku": "RING-7", "properties": {"Engraving": "A&M"}}]}
    assert lane_for(engraved) == "custom"


def test_custom_rules_are_configurable_per_store() -> None:
    jeweller = LaneRules(custom_sku_prefixes=("RING-",), custom_property_words=())
    order = {"lines": [{"sku": "RING-7", "properties": {}}]}
    assert lane_for(order, jeweller) == "custom"
    assert lane_for(order) == "standard"  # the default rules know no RING- flag
    assert lane_for({"lines": [{"sku": "X", "properties": {"Engraving": "x"}}]},
                    jeweller) == "standard"


def test_a_lane_the_store_does_not_use_falls_back_to_standard() -> None:
    no_vip = LaneRules(lanes=("standard", "custom"))
    assert lane_for({"customer": {"tags": ["vip"]}, "lines": []}, no_vip) == "standard"


def test_express_promises_dispatch_within_48_hours_and_stores_get_their_own_rules() -> None:
    with pytest.raises(ValidationError):
        LaneRules(promise_hours={"standard": 72, "express": 72})
    s = Settings(store_lanes={"gems": LaneRules(promise_hours={"standard": 96,
                                                               "express": 24})})
    assert promise_hours(s.lanes_of("gems"), "express") == 24
    assert promise_hours(s.lanes_of("other"), "express") == 48
    assert promise_hours(s.lanes_of("gems"), "unknown") == 96


def test_zones_domestic_regional_international() -> None:
    assert zone_of("US", "US") == "domestic"
    assert zone_of("DE", "FR") == "regional"
    assert zone_of("US", "CA") == "regional"
    assert zone_of("US", "DE") == "international"
    assert nearest_first(WAREHOUSES, "FR") == ["EU-FR", "EU-DE", "US-EAST"]


def test_nearest_warehouse_with_every_line_wins() -> None:
    avail = {("A", "US-EAST"): 5, ("A", "EU-DE"): 5, ("A", "EU-FR"): 0}
    plan = plan_warehouses([("A", 2)], avail, WAREHOUSES, "FR")
    assert plan.warehouse == "EU-DE" and not plan.is_split


def test_a_split_is_planned_only_when_no_warehouse_has_everything_and_says_so() -> None:
    avail = {("A", "US-EAST"): 5, ("B", "EU-DE"): 5}
    plan = plan_warehouses([("A", 1), ("B", 1)], avail, WAREHOUSES, "US")
    assert plan.is_split
    assert plan.parts == {"US-EAST": {"A": 1}, "EU-DE": {"B": 1}}
    assert plan.reason.startswith("split: no single warehouse has every line")
    assert not plan_warehouses([("C", 1)], avail, WAREHOUSES, "US").parts


def test_ab_arm_is_a_stable_hash_of_the_order_id_with_the_configured_share() -> None:
    arms = [arm_for(i, 0.5) for i in range(4000)]
    assert arms == [arm_for(i, 0.5) for i in range(4000)]
    assert 0.45 < arms.count(LEARNED) / 4000 < 0.55
    assert {arm_for(i, 0.0) for i in range(200)} == {RULES}
    assert {arm_for(i, 1.0) for i in range(200)} == {LEARNED}


def test_intervals_contain_their_estimate() -> None:
    w = wilson_ci(90, 100)
    assert w.low < 0.9 < w.high and w.high <= 1.0
    assert wilson_ci(0, 50).low == pytest.approx(0.0, abs=1e-12)
    m = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m.low < 2.5 < m.high


def test_bins_sort_naturally_and_missing_bins_come_last() -> None:
    bins = ["A-2-10", "", "A-2-9", "B-1-1", "A-10-1"]
    assert sorted(bins, key=bin_sort_key) == ["A-2-9", "A-2-10", "A-10-1", "B-1-1", ""]
