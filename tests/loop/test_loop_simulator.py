"""The loop simulator's clock (bench/loop_simulator.py): a round's ratings are newer than the last export."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from loop_simulator import rating_times  # noqa: E402


def test_each_rating_follows_its_reply_within_twenty_minutes_and_none_is_in_the_future():
    end = datetime(2026, 12, 8, 2, 0, tzinfo=timezone.utc)
    made = [end - timedelta(minutes=m) for m in (60, 30, 10, 1, 0.01)] + [end]
    rated = rating_times(made, end, seed=1)
    assert all(m <= r <= end for m, r in zip(made, rated))
    assert all(r - m <= timedelta(minutes=20) for m, r in zip(made, rated))
    assert rated[0] - made[0] >= timedelta(minutes=0.5)  # an hour before the end: a real delay, not clipped
    assert rated[-1] == end and rated[-2] == end  # the last replies are rated as the round ends, not later
    assert rating_times(made, end, seed=1) == rated and rating_times(made, end, seed=2) != rated
