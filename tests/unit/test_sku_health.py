"""Plain rules of the SKU failure window, the short-SKU verdict and the stock feed parser."""

import pytest

from config.settings import Settings
from domain.sku_health import allowed_failures, freeze_reason, hold_reason, over_the_line
from domain.stock import StockFeedError, parse_stock_feed
from tasks.inventory import short_skus


def test_default_line_is_more_than_1_percent_of_the_last_200_attempts() -> None:
    settings = Settings()
    assert (settings.sku_freeze_failure_rate, settings.sku_freeze_window) == (0.01, 200)
    assert allowed_failures(settings) == 2
    assert not over_the_line("0" * 197 + "11", settings)
    assert over_the_line("0" * 197 + "111", settings)


def test_only_the_last_n_attempts_count() -> None:
    settings = Settings(sku_freeze_window=10, sku_freeze_failure_rate=0.1)  # at most 1 of 10
    old_failures = "111" + "0" * 10
    assert not over_the_line(old_failures, settings)
    assert over_the_line(old_failures + "11", settings)


def test_a_young_sku_counts_missing_attempts_as_successes() -> None:
    settings = Settings()
    # Two failures in two attempts is not 100%: it is 2 of the window of 200.
    assert not over_the_line("11", settings)
    assert over_the_line("111", settings)
    assert "3 of its last 200" in freeze_reason("111", settings)


def test_the_window_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="sku_freeze_failure_rate"):
        Settings(sku_freeze_failure_rate=0)
    with pytest.raises(ValueError, match="sku_freeze_window"):
        Settings(sku_freeze_window=5)


def test_hold_reason_names_the_frozen_skus_only() -> None:
    assert hold_reason(["B", "A", "B"]) == (
        "frozen SKUs A, B: waiting for `orderfleet sku unfreeze`")
    assert hold_reason(["A"]).startswith("frozen SKU A:")


def test_short_skus_are_those_no_single_warehouse_has_enough_of() -> None:
    available = {("A", "W1"): 2, ("A", "W2"): 2, ("B", "W1"): 5}
    # 3 of A: 4 in total, but no one warehouse has 3.
    assert short_skus([("A", 3), ("B", 1)], available, ["W1", "W2"]) == ["A"]
    assert short_skus([("A", 1), ("A", 1), ("C", 1)], available, ["W1", "W2"]) == ["C"]
    assert short_skus([("A", 2), ("B", 5)], available, ["W1", "W2"]) == []


def test_stock_feed_conflicting_duplicates_are_refused_naming_the_rows() -> None:
    text = "sku,warehouse,on_hand\nA,W1,5\nA,W1,5\nA,W1,7\n"
    with pytest.raises(StockFeedError, match="row 3: A at W1 appears again with on_hand 7"):
        parse_stock_feed(text)
    # An exact repeat is harmless (a replayed line).
    assert len(parse_stock_feed("sku,warehouse,on_hand\nA,W1,5\nA,W1,5\n")) == 2


def test_stock_feed_errors_name_the_problem() -> None:
    with pytest.raises(StockFeedError, match="not valid JSON"):
        parse_stock_feed('[{"sku": "A"', "json")
    with pytest.raises(StockFeedError, match="lacks column.*on_hand"):
        parse_stock_feed("sku,warehouse\nA,W1\n")
    with pytest.raises(StockFeedError, match="row 2: invalid on_hand"):
        parse_stock_feed('[{"sku": "A", "warehouse": "W", "on_hand": 1},'
                         ' {"sku": "B", "warehouse": "W", "on_hand": -1}]')
