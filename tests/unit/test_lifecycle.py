"""The transition table: one place, no dead ends, terminal states final."""

from domain.lifecycle import AUTOMATED, TERMINAL, TRANSITIONS, State, is_allowed


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def test_terminal_states_allow_nothing() -> None:
    # split: final for the parent of a split order (its parts carry on).
    assert {State.REJECTED, State.CANCELLED, State.RETURNED, State.SPLIT} == TERMINAL
    for s in TERMINAL:
        for t in State:
            assert not is_allowed(s, t)


def test_every_state_reaches_a_terminal_state() -> None:
    for start in State:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & TERMINAL, f"{start} cannot finish"


def test_happy_path_is_allowed_and_shortcuts_are_not() -> None:
    path = [State.RECEIVED, State.FRAUD_CHECKED, State.RESERVED, State.IN_WAVE,
            State.LABELLED, State.IN_TRANSIT, State.DELIVERED]
    for a, b in zip(path, path[1:], strict=False):
        assert is_allowed(a, b)
    assert not is_allowed(State.RECEIVED, State.LABELLED)
    assert not is_allowed(State.DELIVERED, State.CANCELLED)
    assert not is_allowed(State.ON_HOLD, State.RESERVED)  # review first, then reserve


def test_held_orders_are_not_automated() -> None:
    assert State.ON_HOLD not in AUTOMATED and State.BACKORDERED not in AUTOMATED


def test_only_a_reservable_order_can_be_split_and_a_split_is_settled() -> None:
    from domain.lifecycle import FINAL, SETTLED
    assert {s for s in State if is_allowed(s, State.SPLIT)} == {State.FRAUD_CHECKED,
                                                               State.BACKORDERED}
    assert State.SPLIT in SETTLED and State.SPLIT in FINAL and State.SPLIT not in AUTOMATED
