"""Environment variables that were renamed: the new name is read; the old one still works
for one release, with a deprecation warning.

config/settings.py reads every renamed variable through `env_renamed`; the old names a
process was started with are logged once at start-up (infra.apps), when logging is set up.
"""
import logging
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Old names this process was given, each with its new name, in the order they were read.
_OLD_NAMES_USED: dict[str, str] = {}


def env_renamed(read: Callable[..., T], name: str, *, old: str, default: T) -> T:
    """`read(name, default=default)` (a django-environ reader: env.float, env.str...); when
    only the old name is set, its value, and a DeprecationWarning the first time."""
    if name in os.environ or old not in os.environ:
        return read(name, default=default)
    if old not in _OLD_NAMES_USED:
        _OLD_NAMES_USED[old] = name
        warnings.warn(f"{old} is deprecated and goes in the next release: set {name} instead",
                      DeprecationWarning, stacklevel=2)
    return read(old, default=default)


def old_names_used() -> dict[str, str]:
    """Each old name read in this process, with the name that replaces it."""
    return dict(_OLD_NAMES_USED)


def old_names_log() -> None:
    """One WARNING per old name in use; called once when the process starts."""
    for old, name in _OLD_NAMES_USED.items():
        logger.warning("environment variable %s is deprecated and goes in the next release: "
                       "set %s instead (its value is used meanwhile)", old, name)
