"""Settings for pytest's own process: config.settings, plus what every test needs.

The processes the tests start (web, workers, beat, commands) run config.settings, configured
by their environment as in production (tests/support.py, process_env); settings that only some
tests need are changed per test, through pytest-django's `settings` fixture.
"""
from config.settings import *  # noqa: F403

# PBKDF2's deliberate cost only slows the many sign-ups the tests make.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Every test client is 127.0.0.1: the payment endpoints' throttles would add up across tests.
# The throttle tests set their own rates.
RETURN_RATE = "100000/minute"
PAYMENT_REFUSED_RATE = "100000/minute"
