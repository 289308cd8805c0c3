"""services.runtime.ops.GroupLag: which consumer group `flows lag` marks, and how (the real broker's states are in
tests/integration/test_lag_cli.py; here the cases a broker does not easily make on demand)."""

from __future__ import annotations

from services.runtime.kafkagroups import GroupState, Member
from services.runtime.ops import NO_MEMBER, NOBODY_CONSUMING, GroupLag, Lag


def _group(state: str, members: tuple[Member, ...], lags: dict[tuple[str, int], int]) -> GroupLag:
    return GroupLag(GroupState("loader", state, members, frozenset({t for t, _ in lags})),
                    [Lag("loader", t, p, 10, 10 + lag, None) for (t, p), lag in sorted(lags.items())])


ONE = Member("m-1", "loader", "/10.0.0.5", (("flows.load-requested", 0), ("flows.load-requested", 1)))


def test_a_group_with_a_member_holding_its_partitions_is_not_marked_even_with_lag():
    group = _group("Stable", (ONE,), {("flows.load-requested", 0): 4, ("flows.load-requested", 1): 0})
    assert group.lag == 4 and group.mark() is None and group.warning() is None
    assert group.described.holder("flows.load-requested", 0) == ONE and ONE.name == "loader@10.0.0.5"


def test_no_member_is_marked_and_nobody_consuming_when_messages_wait():
    idle = _group("Empty", (), {("flows.load-requested", 0): 0})
    waiting = _group("Empty", (), {("flows.load-requested", 0): 0, ("flows.load-requested", 1): 7})
    assert idle.mark() == NO_MEMBER and idle.warning() == (f"{NO_MEMBER}: offsets committed, lag 0; its service is "
                                                           "not running, or not connected")
    assert waiting.mark() == NOBODY_CONSUMING and waiting.warning() == (
        f"{NOBODY_CONSUMING}: lag 7 and no member; is its service running? (`flows stack status`)")


def test_partitions_with_lag_that_no_member_of_a_stable_group_holds_are_nobody_s():
    # committed on a topic its members no longer read: those messages wait for nobody
    group = _group("Stable", (ONE,), {("flows.load-requested", 0): 0, ("flows.old-topic", 0): 5,
                                      ("flows.old-topic", 1): 0})
    assert [(p.topic, p.partition) for p in group.unheld] == [("flows.old-topic", 0)]
    assert group.warning() == f"{NOBODY_CONSUMING}: lag 5 on 1 partition(s) that no member holds"


def test_a_rebalancing_group_is_not_marked_for_partitions_not_yet_assigned():
    joining = Member("m-2", "loader", "/10.0.0.6", ())  # assignments are empty while the group rebalances
    group = _group("PreparingRebalance", (ONE, joining), {("flows.load-requested", 2): 3})
    assert group.mark() is None


def test_a_group_that_never_committed_is_not_marked():
    assert _group("Empty", (), {}).mark() is None
    assert _group("Stable", (ONE,), {}).mark() is None
