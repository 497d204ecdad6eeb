"""Rate shopping: the cheapest service that meets the order's delivery promise."""

from decimal import Decimal

from config.settings import Settings
from domain.carriers import Rate
from tasks.labels import choose_service, promise_days_for


def rate(carrier: str, service: str, price: str, days: int) -> Rate:
    return Rate(carrier, service, Decimal(price), "USD", days)


QUOTES = [
    rate("sbx-post", "ground", "14.00", 10),
    rate("sbx-air", "ground", "19.50", 5),
    rate("sbx-post", "express", "24.00", 6),
    rate("sbx-air", "express", "34.00", 2),
]


def test_cheapest_service_meeting_the_promise_wins() -> None:
    choice = choose_service(QUOTES, promise_days=5)
    assert choice is not None
    assert (choice.carrier, choice.service, choice.rate) == ("sbx-air", "ground", Decimal("19.50"))
    assert choice.meets_promise and choice.est_delivery_days == 5 and choice.promise_days == 5


def test_a_generous_promise_takes_the_cheapest_of_all() -> None:
    choice = choose_service(QUOTES, promise_days=10)
    assert choice is not None and (choice.carrier, choice.service) == ("sbx-post", "ground")


def test_a_tight_promise_pays_for_speed() -> None:
    choice = choose_service(QUOTES, promise_days=2)
    assert choice is not None and (choice.carrier, choice.service) == ("sbx-air", "express")


def test_an_impossible_promise_takes_the_fastest_and_says_so() -> None:
    choice = choose_service(QUOTES, promise_days=1)
    assert choice is not None
    assert (choice.service, choice.est_delivery_days) == ("express", 2)
    assert not choice.meets_promise


def test_shopping_within_the_waves_carrier_only() -> None:
    choice = choose_service(QUOTES, promise_days=7, carriers={"sbx-post"})
    assert choice is not None and (choice.carrier, choice.service) == ("sbx-post", "express")


def test_equal_prices_prefer_the_faster_service() -> None:
    tie = [rate("a", "slow", "5.00", 4), rate("b", "fast", "5.00", 2)]
    choice = choose_service(tie, promise_days=5)
    assert choice is not None and choice.service == "fast"


def test_no_quote_no_choice() -> None:
    assert choose_service([], promise_days=5) is None
    assert choose_service(QUOTES, promise_days=5, carriers={"nobody"}) is None


def test_promise_by_lane_with_standard_for_the_rest() -> None:
    s = Settings(delivery_promise_days={"standard": 5, "vip": 2})
    assert promise_days_for(s, "vip") == 2
    assert promise_days_for(s, "custom") == 5
    assert promise_days_for(s, None) == 5
