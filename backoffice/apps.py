from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """The operators' pages: the admin of the shop and its payments, and the dashboard."""

    name = "backoffice"
    verbose_name = "Operator pages"
