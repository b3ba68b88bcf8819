"""The admin: found by Django's autodiscovery (this app's `admin` module), registering the
shop's and the payments' models."""
from backoffice.admin import payment_admin, shop_admin  # noqa: F401  (registers the models)
