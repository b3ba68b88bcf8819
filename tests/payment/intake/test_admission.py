"""The intake's places (payment/intake/admission.py) on one event loop: a request past
INTAKE_MAX_ACTIVE waits its turn at most INTAKE_QUEUE_SECONDS, then is refused; a place that
comes free goes to the first one waiting; a waiting return gives its place up."""
import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from payment.intake import admission

T = TypeVar("T")


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The scenario on a fresh event loop in a thread of its own: a test that ran before in
    this thread (a browser's driver) may have left a loop running here."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(scenario())).result()


@pytest.fixture(autouse=True)
def two_places(settings: Any) -> None:
    settings.INTAKE_MAX_ACTIVE = 2
    settings.INTAKE_QUEUE_SECONDS = 0.2
    settings.INTAKE_RETRY_AFTER_SECONDS = 3


async def _hold(release: asyncio.Event, log: list[str], name: str) -> None:
    try:
        async with admission.working("notify"):
            log.append(f"{name} in")
            await release.wait()
    except admission.Busy as exc:
        log.append(f"{name} busy {exc.retry_after}")


def test_past_the_limit_a_request_waits_its_turn_then_is_refused() -> None:
    async def scenario() -> tuple[list[str], float, int]:
        release, log = asyncio.Event(), list[str]()
        held = [asyncio.create_task(_hold(release, log, name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        started = time.perf_counter()
        await _hold(release, log, "c")  # nobody leaves: refused after the queue time
        refused_after = time.perf_counter() - started
        release.set()
        await asyncio.gather(*held)
        return log, refused_after, admission.admission().active

    log, refused_after, active = _run(scenario)

    assert log == ["a in", "b in", "c busy 3"]
    assert 0.15 <= refused_after < 1.0
    assert active == 0


def test_a_place_that_comes_free_goes_to_the_first_waiting() -> None:
    async def scenario() -> tuple[list[str], int]:
        first, later, log = asyncio.Event(), asyncio.Event(), list[str]()
        held = [asyncio.create_task(_hold(first, log, "a")),
                asyncio.create_task(_hold(later, log, "b"))]
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(_hold(later, log, name)) for name in ("c", "d")]
        await asyncio.sleep(0.05)
        first.set()  # a leaves: its place goes to c, d keeps waiting and is refused
        await asyncio.sleep(0.3)
        later.set()
        await asyncio.gather(*held, *waiting)
        return log, admission.admission().active

    log, active = _run(scenario)

    assert log == ["a in", "b in", "c in", "d busy 3"]
    assert active == 0


def test_a_return_waiting_for_the_workers_frees_its_place() -> None:
    async def scenario() -> tuple[list[str], int]:
        release, log = asyncio.Event(), list[str]()

        async def waiting_return() -> None:
            async with admission.working("return"):
                with admission.admission().paused():
                    await release.wait()

        returns = [asyncio.create_task(waiting_return()) for _ in range(5)]
        await asyncio.sleep(0)  # five returns waiting, two places
        notify = asyncio.create_task(_hold(release, log, "n"))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*returns, notify)
        return log, admission.admission().active

    log, active = _run(scenario)

    assert log == ["n in"]
    assert active == 0


def test_a_loop_that_has_fallen_behind_refuses_at_once(settings: Any) -> None:
    settings.INTAKE_QUEUE_SECONDS = 5.0
    settings.INTAKE_MAX_LAG_SECONDS = 0.05

    async def scenario() -> tuple[list[str], float, float, int]:
        release, log = asyncio.Event(), list[str]()
        places = admission.admission()
        held = [asyncio.create_task(_hold(release, log, name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        waiting = asyncio.create_task(_hold(release, log, "c"))  # waits for a place
        await asyncio.sleep(0.03)
        for _ in range(admission.LATE_TICKS):  # a steady excess: timer after timer fires late
            time.sleep(0.12)
            await asyncio.sleep(0.001)  # the late timer (due first) runs first: it measures
        lag = places.lag
        started = time.perf_counter()
        await _hold(release, log, "d")  # no place, and behind: refused without waiting
        refused_after = time.perf_counter() - started
        await waiting
        release.set()
        await asyncio.gather(*held)
        return log, lag, refused_after, places.active

    log, lag, refused_after, active = _run(scenario)

    assert lag > 0.05
    assert log == ["a in", "b in", "c busy 3", "d busy 3"]
    assert refused_after < 0.05
    assert active == 0


def test_a_loop_on_time_lets_requests_wait_their_turn(settings: Any) -> None:
    settings.INTAKE_MAX_LAG_SECONDS = 0.05

    async def scenario() -> tuple[list[str], float]:
        release, log = asyncio.Event(), list[str]()
        held = [asyncio.create_task(_hold(release, log, name)) for name in ("a", "b")]
        await asyncio.sleep(0)
        waiting = asyncio.create_task(_hold(release, log, "c"))
        await asyncio.sleep(0.1)  # on time: c still waits for its place
        release.set()
        await asyncio.gather(*held, waiting)
        return log, admission.admission().lag

    log, lag = _run(scenario)

    assert lag < 0.05
    assert log == ["a in", "b in", "c in"]


def test_past_the_returns_waiting_for_the_workers_a_new_return_is_refused(settings: Any) -> None:
    settings.INTAKE_MAX_WAITING = 1

    async def scenario() -> list[str]:
        release, log = asyncio.Event(), list[str]()

        async def waiting_return(name: str) -> None:
            try:
                async with admission.working("return") as places:
                    places.wait_admit("return")
                    with places.paused():
                        log.append(f"{name} waits")
                        await release.wait()
            except admission.Busy as exc:
                log.append(f"{name} busy {exc.retry_after}")

        first = asyncio.create_task(waiting_return("a"))
        await asyncio.sleep(0.01)
        await waiting_return("b")  # a waits for the workers: no room for a second
        release.set()
        await first
        await waiting_return("c")  # a's wait is over
        return log

    assert _run(scenario) == ["a waits", "b busy 3", "c waits"]


def test_after_a_wait_in_vain_newcomers_are_refused_at_once_until_a_place_frees() -> None:
    async def scenario() -> tuple[list[str], float]:
        log = list[str]()
        a_done, b_done = asyncio.Event(), asyncio.Event()
        held = [asyncio.create_task(_hold(a_done, log, "a")),
                asyncio.create_task(_hold(b_done, log, "b"))]
        await asyncio.sleep(0)
        await _hold(b_done, log, "c")  # waits the whole 0.2 s in vain
        started = time.perf_counter()
        await _hold(b_done, log, "d")  # the queue does not drain: refused without waiting
        refused_after = time.perf_counter() - started
        a_done.set()  # a place comes free: waiting is worth it again
        await asyncio.sleep(0.01)
        held.append(asyncio.create_task(_hold(b_done, log, "e")))
        await asyncio.sleep(0.01)
        b_done.set()
        await asyncio.gather(*held)
        return log, refused_after

    log, refused_after = _run(scenario)

    assert log == ["a in", "b in", "c busy 3", "d busy 3", "e in"]
    assert refused_after < 0.05
