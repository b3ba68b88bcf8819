from django.apps import AppConfig


class PaymentConfig(AppConfig):
    name = "payment"
    verbose_name = "Payments"

    def ready(self) -> None:
        from infra.metrics import scrape_source_register
        from payment.gateway import checks  # noqa: F401  (registers the key file check)
        from payment.metrics import certificate_families, ledger_families

        scrape_source_register("database", ledger_families)
        scrape_source_register("certificates", certificate_families)
