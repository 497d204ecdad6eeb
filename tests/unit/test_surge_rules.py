"""Surge control rules without I/O: EWMA, breaker hysteresis and dwell, the three stages,
scale advice, and the fast-lane predicate."""

import math

from config.celery import FAST_LANE_QUEUES, NONCORE_QUEUES, QUEUES, TASK_ROUTES
from config.settings import Settings
from domain.fastlane import is_fast_lane
from domain.pipeline import FAST_LANE_QUEUE, NONCORE_TASKS
from domain.surge import ControlState, Measurement, decide, ewma, raw_load, slots_needed

S = Settings(surge_open_load=0.8, surge_close_load=0.6, surge_min_dwell_s=30,
             surge_ewma_tau_s=1e-9, surge_wait_target_s=100, surge_rate_window_s=10,
             surge_intake_ratio=4.0, surge_min_baseline_per_s=0.1,
             surge_stage2_after_s=60, surge_stage3_after_s=120)


def m(at: float, busy: int = 0, slots: int = 10, wait: float = 0.0, arrivals: int = 10,
      backlog: int = 0) -> Measurement:
    return Measurement(at=at, slots=slots, busy_core=busy, queued_core=0,
                       backlog_orders=backlog, oldest_wait_s=wait, arrivals=arrivals,
                       drained=0, window_s=10)


def run(steps: list[Measurement], st: ControlState | None = None) -> list[ControlState]:
    st = st or ControlState()
    out = []
    for x in steps:
        st = decide(st, x, S).state
        out.append(st)
    return out


def test_load_is_the_larger_of_busy_slots_and_the_oldest_wait() -> None:
    assert raw_load(m(0, busy=5), S) == (0.5, 0.5)
    assert raw_load(m(0, busy=5, wait=90), S) == (0.9, 0.5)
    assert raw_load(m(0, busy=20), S)[1] == 1.0  # reserved beyond the slots: saturated


def test_ewma_follows_the_time_constant_for_irregular_ticks() -> None:
    assert ewma(None, 1.0, 5, 10) == 1.0
    assert math.isclose(ewma(0.0, 1.0, 10, 10), 1 - math.exp(-1))
    assert ewma(0.5, 1.0, 0, 10) == 0.5


def test_the_first_tick_averages_from_idle() -> None:
    slow = S.model_copy(update={"surge_ewma_tau_s": 10.0, "surge_monitor_interval_s": 2.0})
    st = decide(ControlState(), m(0, busy=10), slow).state
    assert st.breaker == "closed" and math.isclose(st.load or 0, 1 - math.exp(-0.2))


# As shipped: the 10 s average, a tick every 2 s, batches of 250, two slots.
SHIPPED = Settings(batch_size=250, surge_monitor_interval_s=2.0)


def test_a_burst_opens_the_breaker_on_its_second_saturated_tick() -> None:
    # 4 batches of 250 per slot, 2 slots: 2,000 orders waiting saturate the fleet.
    st, states = ControlState(), []
    for t, backlog in [(0, 100), (2, 5000), (4, 4200), (6, 3000)]:
        d = decide(st, m(t, busy=2, slots=2, backlog=backlog), SHIPPED)
        st = d.state
        states.append(d)
    assert [d.state.breaker for d in states] == ["closed", "closed", "open", "open"]
    # The average alone was far from the threshold: the backlog opened it.
    assert (states[2].state.load or 0) < SHIPPED.surge_open_load
    opened = states[2].transitions[0]
    assert "4200 orders waiting" in opened["reason"]
    assert (opened["backlog_orders"], opened["slots"]) == (4200, 2)


def test_a_backlog_that_keeps_up_or_comes_and_goes_opens_nothing() -> None:
    st = ControlState()
    # Half load: a few hundred orders in flight; a spike on single ticks, never two in a row.
    for t, backlog in enumerate([300, 450, 2500, 200, 2500, 380, 1999, 1999, 1999]):
        st = decide(st, m(2 * t, busy=1, slots=2, backlog=backlog), SHIPPED).state
        assert st.breaker == "closed"
    # No slot announced (no worker running): the backlog is no measure of a burst.
    st = ControlState()
    for t in range(4):
        st = decide(st, m(2 * t, busy=0, slots=0, backlog=9000), SHIPPED).state
    assert st.saturated_since is None


def test_breaker_opens_above_80_and_stays_open_between_60_and_80() -> None:
    states = run([m(0, busy=5), m(1, busy=9), m(100, busy=7), m(200, busy=7)])
    assert [s.breaker for s in states] == ["closed", "open", "open", "open"]


def test_breaker_closes_below_60_only_after_the_dwell() -> None:
    states = run([m(0, busy=9), m(10, busy=3), m(29, busy=3), m(31, busy=3)])
    assert [s.breaker for s in states] == ["open", "open", "open", "closed"]


def test_transitions_are_reported_with_the_load_that_caused_them() -> None:
    d = decide(ControlState(), m(0, busy=9), S)
    assert d.transitions[0]["what"] == "breaker" and d.transitions[0]["to"] == "open"
    assert d.transitions[0]["load"] == 0.9


def test_an_intake_jump_over_300_percent_walks_the_three_stages_and_reverts() -> None:
    base = run([m(t, arrivals=10) for t in range(0, 50, 10)])  # 1 order/s baseline
    assert base[-1].stage == 0 and math.isclose(base[-1].baseline or 0, 1.0)
    surge = run([m(60, arrivals=50, busy=10), m(130, arrivals=50, busy=10),
                 m(190, arrivals=50, busy=10)], base[-1])
    assert [s.stage for s in surge] == [1, 2, 3]
    assert all(s.breaker == "open" for s in surge)
    calm = run([m(200, arrivals=10, busy=1), m(240, arrivals=10, busy=1)], surge[-1])
    assert calm[0].stage == 0  # reverted as soon as intake and load fell
    assert calm[-1].breaker == "closed"  # and the breaker after its dwell
    # The baseline did not learn the surge.
    assert math.isclose(calm[-1].baseline or 0, 1.0)


def test_a_jump_the_fleet_absorbs_is_no_surge() -> None:
    states = run([m(t, arrivals=10) for t in range(0, 50, 10)] + [m(60, arrivals=50, busy=2)])
    assert states[-1].stage == 0


def test_a_rise_below_the_ratio_is_no_surge() -> None:
    states = run([m(t, arrivals=10) for t in range(0, 50, 10)]
                 + [m(60, arrivals=35), m(70, arrivals=35)])
    assert states[-1].stage == 0


def test_scale_advice_counts_arrivals_and_the_backlog_over_the_target() -> None:
    # 2 orders/s per slot; 1,200 orders in 60 s plus 10/s arriving = 30/s = 15 slots.
    assert slots_needed(1200, 10.0, 8.0, 4, 60.0) == 15
    assert slots_needed(100, 1.0, 0.0, 4, 60.0) is None


def test_fast_lane_is_vip_customers_vip_orders_and_express() -> None:
    assert is_fast_lane({"customer": {"tags": ["VIP"]}})
    assert is_fast_lane({"tags": ["vip"]})
    assert is_fast_lane({"tags": "gift, Express"})  # Shopify sends tags as one string
    assert is_fast_lane({"tags": [], "dispatch_promise_hours": 24})
    assert not is_fast_lane({"tags": [], "dispatch_promise_hours": 72})
    assert not is_fast_lane({"tags": ["wholesale"], "customer": {"tags": []}})


def test_fast_lane_and_noncore_queues_are_declared_and_routed() -> None:
    assert set(FAST_LANE_QUEUE.values()) == set(FAST_LANE_QUEUES.values())
    assert set(FAST_LANE_QUEUE.values()) <= set(QUEUES)
    for task in NONCORE_TASKS.values():
        assert TASK_ROUTES[task] in NONCORE_QUEUES.values()
    # Each non-core kind that runs after an order's stage has a queue of its own.
    kinds = [k for k in NONCORE_TASKS if k != "delay_compensation"]
    assert len({TASK_ROUTES[NONCORE_TASKS[k]] for k in kinds}) == len(kinds)


def test_the_express_and_vip_lanes_take_the_fast_lane() -> None:
    # An order the store's lane rules put in the express lane by its shipping method (no tag,
    # no promise field) rides the fast lanes too; a custom-made or standard one does not.
    from domain.routing import lane_for

    express = {"tags": [], "customer": {"tags": []}, "shipping_method": "Express Shipping",
               "lines": [{"sku": "TEE-M", "quantity": 1}]}
    assert lane_for(express) == "express"
    assert is_fast_lane(express, lane_for(express))
    standard = {**express, "shipping_method": "Standard Shipping"}
    assert not is_fast_lane(standard, lane_for(standard))
