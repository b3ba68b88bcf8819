"""Behaviour settings that the control API can change while the sandbox runs, and its clock.

Start-up values come from the configuration (Alipay's durations times the time factor); the
control API sets real seconds. ``reset`` goes back to the start-up values.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from .config import Config

CHINA = timezone(timedelta(hours=8), "Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
DAY_S = 86400.0
# A bill URL must outlive one HTTP round trip on a loaded machine, whatever the time factor.
MIN_BILL_URL_TTL_S = 2.0


class SettingsError(ValueError):
    """A setting has a bad name or value."""


@dataclass
class Settings:
    refund_window_s: float
    bill_url_ttl_s: float
    empty_param_rate: float
    clock_offset_s: float = 0.0


def settings_from(config: Config) -> Settings:
    return Settings(
        refund_window_s=config.refund_window_days * DAY_S * config.time_factor,
        bill_url_ttl_s=max(config.bill_url_ttl_s * config.time_factor, MIN_BILL_URL_TTL_S),
        empty_param_rate=config.empty_param_rate,
    )


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SettingsError(f"{name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if not math.isfinite(number):
        raise SettingsError(f"{name} must be finite")
    return number


def _coerce(name: str, value: Any) -> float:
    number = _number(name, value)
    if name in ("refund_window_s", "bill_url_ttl_s") and number <= 0:
        raise SettingsError(f"{name} must be positive")
    if name == "empty_param_rate" and not 0.0 <= number <= 1.0:
        raise SettingsError("empty_param_rate must be between 0 and 1")
    return number


class Runtime:
    """Thread-safe holder of the current :class:`Settings`; the sandbox's clock."""

    def __init__(self, defaults: Settings) -> None:
        self._defaults = replace(defaults)
        self._lock = threading.Lock()
        self._current = replace(defaults)

    def snapshot(self) -> Settings:
        with self._lock:
            return replace(self._current)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.snapshot())

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        with self._lock:
            for name, value in coerced.items():
                setattr(self._current, name, value)
        return self.as_dict()

    def reset(self) -> dict[str, Any]:
        with self._lock:
            self._current = replace(self._defaults)
        return self.as_dict()

    # -- the clock (real time plus clock_offset_s) ----------------------------------------
    def now(self) -> float:
        with self._lock:
            offset = self._current.clock_offset_s
        return time.time() + offset

    def cn_now(self) -> datetime:
        return datetime.fromtimestamp(self.now(), CHINA)

    def cn_time(self, moment: float | None = None) -> str:
        """Beijing time ``yyyy-MM-dd HH:mm:ss`` of ``moment`` (Unix seconds; default now)."""
        when = self.now() if moment is None else moment
        return datetime.fromtimestamp(when, CHINA).strftime(TIME_FORMAT)


def parse_cn_time(value: str) -> float:
    """Unix seconds of a Beijing time ``yyyy-MM-dd HH:mm:ss``; ValueError when malformed."""
    if not TIME_RE.fullmatch(value):
        raise ValueError(f"not yyyy-MM-dd HH:mm:ss: {value!r}")
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=CHINA).timestamp()
