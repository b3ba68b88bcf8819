"""Settings for pytest's own process: config.settings, plus what every test needs.

The processes the tests start (web, workers, beat, commands) run config.settings, configured
by their environment as in production (tests/support.py, process_env); settings that only some
tests need are changed per test, through pytest-django's `settings` fixture.
"""
import os
import re

# `make test` runs the suite in two processes (pytest-xdist): the second one's workers take
# their tasks from a Redis database of its own (one below the first's), or each process's
# workers would take the other's (tests/support.py `redis_url` for the tests' spare ones).
XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
if XDIST_INDEX > 1:
    raise RuntimeError("the tests' Redis databases are laid out for two pytest processes at "
                       "most: TEST_PROCESSES=2 (or 0 or 1)")
for _name in ("CELERY_BROKER_URL", "PAYMENT_REDIS_URL"):
    _url = re.fullmatch(r"(rediss?://[^/]+)/(\d+)", os.environ.get(_name, ""))
    if _url and XDIST_INDEX:
        os.environ[_name] = f"{_url[1]}/{int(_url[2]) - XDIST_INDEX}"

from config.settings import *  # noqa: E402, F403

# PBKDF2's deliberate cost only slows the many sign-ups the tests make.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Every test client is 127.0.0.1: the payment endpoints' throttles would add up across tests.
# The throttle tests set their own rates.
RETURN_RATE = "100000/minute"
PAYMENT_REFUSED_RATE = "100000/minute"

# The suite never reads the keys in keys/ (a developer's sandbox keys, absent from a fresh
# clone): a test signs with the session's throwaway keys (tests/conftest.py `alipay_settings`)
# or with keys of its own, and one that forgets fails here as it would on a fresh clone. A
# process started with this module and key paths in its environment keeps them.
UNSET_KEYS_DIR = BASE_DIR / "tests" / "keys-unset"  # noqa: F405
ALIPAY_APP_PRIVATE_KEY_PATH = Path(os.environ.get(  # noqa: F405
    "ALIPAY_APP_PRIVATE_KEY_PATH", UNSET_KEYS_DIR / "app_private_key.pem"))
ALIPAY_PUBLIC_KEY_PATH = Path(os.environ.get(  # noqa: F405
    "ALIPAY_PUBLIC_KEY_PATH", UNSET_KEYS_DIR / "alipay_public_key.pem"))
