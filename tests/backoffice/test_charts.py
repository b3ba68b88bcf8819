"""The charts' scales: round tops for counts and durations, durations in words, bar heights."""
import pytest

from backoffice.dashboard.charts import (
    BOTTOM,
    HEIGHT,
    TOP,
    _Canvas,
    nice_ceiling,
    nice_duration_ceiling,
    seconds_text,
)


@pytest.mark.parametrize(("value", "top"), [
    (0, 1.0), (1, 1.0), (1.5, 2.0), (2, 2.0), (3, 5.0), (7, 10.0), (10, 10.0), (11, 20.0),
    (250, 500.0), (501, 1000.0), (86_000, 100_000.0),
])
def test_a_count_axis_ends_at_1_2_or_5_times_a_power_of_ten(value: float, top: float) -> None:
    assert nice_ceiling(value) == top


@pytest.mark.parametrize(("seconds", "top"), [
    (0.2, 1.0), (45, 60.0), (61, 120.0), (3601, 7200.0), (86_400, 86_400.0),
    (90_000, 172_800.0),
])
def test_a_duration_axis_ends_at_a_round_duration(seconds: float, top: float) -> None:
    assert nice_duration_ceiling(seconds) == top


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0"), (0.85, "850 ms"), (12.5, "12.5 s"), (252, "4.2 min"), (5400, "90.0 min"),
    (9000, "2.5 h"),
])
def test_durations_are_written_for_a_person(seconds: float, text: str) -> None:
    assert seconds_text(seconds) == text


def test_values_are_placed_between_the_top_and_the_bottom_of_the_plot() -> None:
    canvas = _Canvas(buckets=24)
    bottom = HEIGHT - BOTTOM

    assert canvas.y(0, top=10) == bottom
    assert canvas.y(10, top=10) == TOP
    assert canvas.y(5, top=10) == (TOP + bottom) / 2
    assert canvas.x(24) - canvas.x(0) == canvas.plot_w
