"""Injected faults, set through the control API. Held in memory; reset clears them."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ERROR_KINDS = ("20000", "http500", "timeout")


class FaultError(ValueError):
    """A fault setting has a bad name or value."""


@dataclass
class FaultSet:
    latency_ms: int = 0
    error_rate: float = 0.0
    error_kind: str = "20000"
    timeout_s: float = 20.0
    methods: list[str] = field(default_factory=list)
    drop_return: bool = False
    notify_drop: bool = False
    notify_duplicate: int = 0
    notify_delay_s: float = 0.0
    notify_reorder: bool = False
    notify_reorder_window_s: float = 1.0
    bill_url: str = ""


def _coerce(name: str, value: Any) -> Any:
    try:
        if name in ("latency_ms", "notify_duplicate"):
            number = int(value)
            if number < 0:
                raise FaultError(f"{name} must not be negative")
            return number
        if name in ("error_rate",):
            rate = float(value)
            if not 0.0 <= rate <= 1.0:
                raise FaultError("error_rate must be between 0 and 1")
            return rate
        if name in ("timeout_s", "notify_delay_s", "notify_reorder_window_s"):
            seconds = float(value)
            if seconds < 0:
                raise FaultError(f"{name} must not be negative")
            return seconds
        if name in ("drop_return", "notify_drop", "notify_reorder"):
            if not isinstance(value, bool):
                raise FaultError(f"{name} must be true or false")
            return value
        if name == "error_kind":
            if str(value) not in ERROR_KINDS:
                raise FaultError(f"error_kind must be one of {', '.join(ERROR_KINDS)}")
            return str(value)
        if name == "bill_url":
            if not isinstance(value, str):
                raise FaultError("bill_url must be a string")
            return value
        if name == "methods":
            if value is None:
                return []
            if isinstance(value, str):
                value = [value]
            return [str(item) for item in value]
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FaultError):
            raise
        raise FaultError(f"bad value for {name}: {value!r}") from None
    raise FaultError(f"unknown fault {name!r}")


class Faults:
    """Thread-safe holder of the current :class:`FaultSet`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = FaultSet()

    def snapshot(self) -> FaultSet:
        with self._lock:
            return FaultSet(**asdict(self._current))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.snapshot())

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(FaultSet)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise FaultError(f"unknown fault(s): {', '.join(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        with self._lock:
            for name, value in coerced.items():
                setattr(self._current, name, value)
        return self.as_dict()

    def clear(self) -> dict[str, Any]:
        with self._lock:
            self._current = FaultSet()
        return self.as_dict()

    def applies_to(self, method: str) -> FaultSet | None:
        """The fault set when it touches server API ``method``, else None."""
        current = self.snapshot()
        if current.methods and method not in current.methods:
            return None
        return current

    @staticmethod
    def should_fail(current: FaultSet) -> bool:
        return current.error_rate > 0 and random.random() < current.error_rate
