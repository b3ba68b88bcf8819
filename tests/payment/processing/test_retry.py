"""The retry policy's arithmetic: delays double up to a ceiling, with jitter above a second."""
from datetime import UTC, datetime, timedelta

import pytest

from payment.processing import retry
from payment.processing.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=5, backoff=0.25, backoff_max=60.0, confirm_attempts=3,
                     claim_lease=30.0)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_delays_up_to_a_second_double_without_jitter() -> None:
    assert [POLICY.delay(attempts) for attempts in (0, 1, 2, 3)] == [0.25, 0.25, 0.5, 1.0]


def test_longer_delays_are_drawn_between_half_and_the_whole_ceiling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(retry.random, "uniform", uniform)

    assert POLICY.delay(4) == 2.0 and POLICY.delay(9) == 60.0 and POLICY.delay(40) == 60.0
    assert drawn == [(1.0, 2.0), (30.0, 60.0), (30.0, 60.0)]


def test_a_jittered_delay_stays_within_its_bounds() -> None:
    assert all(4.0 <= POLICY.delay(6) <= 8.0 for _ in range(200))


def test_next_attempt_and_lease_count_from_now() -> None:
    assert POLICY.next_attempt_at(2, NOW) == NOW + timedelta(seconds=0.5)
    assert POLICY.lease_until(NOW) == NOW + timedelta(seconds=30)


def test_attempt_limits() -> None:
    assert not POLICY.exhausted(4) and POLICY.exhausted(5)
    assert not POLICY.confirmations_exhausted(2) and POLICY.confirmations_exhausted(3)


def test_celerys_own_retries_follow_the_same_policy() -> None:
    assert POLICY.task_options() == {"retry_backoff": 1, "retry_backoff_max": 60,
                                     "retry_jitter": True, "max_retries": 5}
