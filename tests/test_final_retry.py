"""Retry policy and schedule with their random source and clock injected: exact, no waiting."""

from __future__ import annotations

import pytest

from jobqueue.final._retry import RetryPolicy, RetrySchedule


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestPolicy:
    def test_delays_double_from_the_base(self) -> None:
        policy = RetryPolicy(max_retries=5, base_delay=0.5, max_delay=60.0, jitter=0.0)
        assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]

    def test_max_delay_caps_them(self) -> None:
        policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=3.0, jitter=0.0)
        assert [policy.delay(n) for n in range(1, 5)] == [1.0, 2.0, 3.0, 3.0]

    def test_a_huge_attempt_number_is_max_delay_not_an_overflow(self) -> None:
        policy = RetryPolicy(max_retries=5, base_delay=1.0, max_delay=3.0, jitter=0.0)
        assert policy.delay(10_000) == 3.0

    @pytest.mark.parametrize(("fraction", "expected"), [(0.0, 4.0), (0.5, 4.5), (0.99, 4.99)])
    def test_jitter_only_lengthens_by_up_to_its_share(
        self, fraction: float, expected: float
    ) -> None:
        policy = RetryPolicy(3, 1.0, 60.0, jitter=0.25, random_fraction=lambda: fraction)
        assert policy.delay(3) == pytest.approx(expected)  # 4 s, plus up to a quarter

    def test_retries_run_out(self) -> None:
        policy = RetryPolicy(max_retries=2, base_delay=1.0, max_delay=60.0, jitter=0.0)
        assert [policy.next_delay(n, None) for n in (1, 2, 3)] == [1.0, 2.0, None]
        assert policy.next_delay(1, 0) is None  # the job's own max_retries wins
        assert policy.next_delay(4, 5) == 8.0


class TestSchedule:
    def test_pops_what_is_due_earliest_first(self) -> None:
        clock = FakeClock()
        schedule: RetrySchedule[str] = RetrySchedule(clock)
        schedule.push("late", 10.0)
        schedule.push("early", 2.0)
        schedule.push("middle", 5.0)
        assert schedule.next_due() == 2.0
        assert schedule.pop_due() == []
        clock.now = 5.0
        assert schedule.pop_due() == ["early", "middle"]
        assert schedule.pop_due(10.0) == ["late"]
        assert schedule.next_due() is None and len(schedule) == 0

    def test_an_earlier_item_says_the_sleeper_must_wake(self) -> None:
        schedule: RetrySchedule[str] = RetrySchedule(FakeClock())
        assert schedule.push("first", 10.0) is True  # nothing was waiting
        assert schedule.push("later", 20.0) is False
        assert schedule.push("sooner", 1.0) is True  # earlier than what the timer sleeps for

    def test_equal_times_keep_arrival_order_without_comparing_items(self) -> None:
        schedule: RetrySchedule[object] = RetrySchedule(FakeClock())
        items = [object() for _ in range(5)]  # objects that cannot be ordered
        for item in items:
            schedule.push(item, 1.0)
        assert schedule.pop_due(1.0) == items
